#!/usr/bin/env bash
# One run of the edge_training DAG on a real Airflow scheduler next to the local edge stack (started by `make stack`).
#   scripts/demo.sh              seed clean sample data, start Airflow, trigger a run over REST, follow it, summarise
#   scripts/demo.sh --bad-data   also corrupt one day in the window: the run must fail at validate_data
# Airflow and the stack keep running afterwards (UI URL and login are printed); `make stop` stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"   # the project's Python and airflow, also when run without make

state="${EDGE_DEMO_STATE_DIR:-.edge-stack}"   # another stack folder (e.g. one started with --free-ports)
# shellcheck disable=SC1091
source "$state/airflow.env"

days=14
window_end=$(date -u +%F)                # the run's training window ends today (UTC)
seed_start=$(date -u -d "$window_end - $days days" +%F)

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
unset EDGE_BLOB_CONNECTION_STRING

echo "== Airflow (standalone: scheduler, dag-processor, api-server, triggerer; pool edge_vm)"
python scripts/airflow_local.py start --state-dir "$state"

python scripts/run_summary.py --state-dir "$state" --conf "${DEMO_CONF:-{\}}"
