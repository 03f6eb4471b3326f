# Airflow image for docker-compose.yaml: the official image plus this project's pinned dependencies.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt constraints.txt /opt/edge-training/
RUN pip install --no-cache-dir -r /opt/edge-training/requirements.txt -c /opt/edge-training/constraints.txt
