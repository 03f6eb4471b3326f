"""Edge training: train a model next to data on Azure Stack Hub, register it, package it.

Importing this package is cheap on purpose: the DAG file imports it at parse time, so heavy libraries
(Great Expectations, azure-ai-ml, scikit-learn, MLflow) are imported only inside the functions that use them.
"""
