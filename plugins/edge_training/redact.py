"""URLs and secrets made safe to log on the Airflow side, by the same rule ``train.py`` applies on the edge VM.

The rule lives in ``include/training/redact.py``, which ships to the VM with the training code; loading it from
there keeps one rule for both sides.
"""

from __future__ import annotations

from edge_training.shipped import training_module

_redact = training_module("redact")

redact_url = _redact.redact_url
redact_text = _redact.redact_text
