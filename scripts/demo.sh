#!/usr/bin/env bash
# One end-to-end run of the edge_training DAG on the local edge stack (started by `make stack`).
#   scripts/demo.sh              seed clean sample data and run the pipeline
#   scripts/demo.sh --bad-data   also corrupt one day in the window: the run must fail at validate_data
set -euo pipefail
cd "$(dirname "$0")/.."

state=.edge-stack
# shellcheck disable=SC1091
source "$state/airflow.env"

days=14
window_end=$(date -u +%F)                # the run's data interval ends today 02:00 UTC
run_after="${window_end}T02:00:00+00:00"
seed_start=$(date -u -d "$window_end - $days days" +%F)

echo "== Airflow metadata DB ($AIRFLOW_HOME)"
airflow db migrate > "$state/airflow-db-migrate.log" 2>&1 || { tail -20 "$state/airflow-db-migrate.log"; exit 1; }
airflow pools set "${EDGE_VM_POOL:-edge_vm}" 1 "Concurrent trainings on the edge VM" --include-deferred > /dev/null

export EDGE_BLOB_CONNECTION_STRING="$(python -c 'import json, os; print(json.loads(os.environ["AIRFLOW_CONN_EDGE_BLOB"])["extra"]["connection_string"])')"
echo "== Sample data: $days days from $seed_start into container sensor-readings"
python include/sample_data/generate.py --connection-string-env EDGE_BLOB_CONNECTION_STRING \
  --start "$seed_start" --days "$days" --rows-per-day "${DEMO_ROWS_PER_DAY:-20000}" --seed 7
if [ "${1:-}" = "--bad-data" ]; then
  bad_day=$(date -u -d "$window_end - 2 days" +%F)
  echo "== Corrupting partition dt=$bad_day (out-of-range values)"
  python include/sample_data/generate.py --connection-string-env EDGE_BLOB_CONNECTION_STRING \
    --start "$bad_day" --days 1 --rows-per-day "${DEMO_ROWS_PER_DAY:-20000}" --seed 7 \
    --corrupt out-of-range --corrupt-date "$bad_day"
fi

echo "== airflow dags test edge_training $run_after"
log="$state/demo-run.log"
set +e
airflow dags test edge_training "$run_after" > "$log" 2>&1
rc=$?
set -e
python scripts/run_summary.py --log "$log" --exit-code "$rc"
exit "$rc"
