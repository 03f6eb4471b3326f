#!/usr/bin/env bash
# One run of the edge_training DAG on a real Airflow scheduler next to the local edge stack (started by `make stack`).
#   scripts/demo.sh              seed clean sample data, start Airflow, trigger a run over REST, follow it, summarise
#   scripts/demo.sh --bad-data   also corrupt one day in the window: the run must fail at validate_data
#   SITES=2 scripts/demo.sh      two sites (site1, site2) from one sites file: each its own data container,
#                                connections, pool, pipeline edge_training_<site> and model; with --bad-data only
#                                the last site's data is corrupted, and the summary says which site failed and why
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
sites="${SITES:-1}"
containers=(sensor-readings)
if [ "$sites" -gt 1 ]; then
  # The local stack stands in for every site: each site's connections reach the same Azurite and sshd, but each
  # site reads its own container and only its own connection ids.
  export EDGE_SITES_FILE="$(cd "$state" && pwd)/sites.yaml"
  containers=()
  echo "sites:" > "$EDGE_SITES_FILE"
  for i in $(seq 1 "$sites"); do
    containers+=("sensor-readings-site$i")
    printf '  - name: site%s\n    container: sensor-readings-site%s\n' "$i" "$i" >> "$EDGE_SITES_FILE"
    export "AIRFLOW_CONN_EDGE_BLOB_SITE$i=$AIRFLOW_CONN_EDGE_BLOB" "AIRFLOW_CONN_EDGE_VM_SITE$i=$AIRFLOW_CONN_EDGE_VM"
  done
  echo "== Sites file $EDGE_SITES_FILE: $sites sites"
fi
last=$(( ${#containers[@]} - 1 ))
for i in "${!containers[@]}"; do
  container="${containers[$i]}"
  echo "== Sample data: $days days from $seed_start into container $container"
  python include/sample_data/generate.py --connection-string-env EDGE_BLOB_CONNECTION_STRING --container "$container" \
    --start "$seed_start" --days "$days" --rows-per-day "${DEMO_ROWS_PER_DAY:-20000}" --seed $((7 + i))
  if [ "${1:-}" = "--bad-data" ] && [ "$i" = "$last" ]; then
    bad_day=$(date -u -d "$window_end - 2 days" +%F)
    echo "== Corrupting partition dt=$bad_day of $container (out-of-range values)"
    python include/sample_data/generate.py --connection-string-env EDGE_BLOB_CONNECTION_STRING \
      --container "$container" --start "$bad_day" --days 1 --rows-per-day "${DEMO_ROWS_PER_DAY:-20000}" \
      --seed $((7 + i)) --corrupt out-of-range --corrupt-date "$bad_day"
  fi
done
unset EDGE_BLOB_CONNECTION_STRING

echo "== Airflow (standalone: scheduler, dag-processor, api-server, triggerer; pool edge_vm)"
python scripts/airflow_local.py start --state-dir "$state"
if [ "$sites" -gt 1 ]; then
  for i in $(seq 1 "$sites"); do
    # Each site's trainings queue in the pool of its own VM.
    AIRFLOW_HOME="$(cd "$state" && pwd)/airflow" airflow pools set "edge_vm_site$i" 1 "edge VM of site$i" \
      --include-deferred >/dev/null
  done
fi

python scripts/run_summary.py --state-dir "$state" --conf "${DEMO_CONF:-{\}}"
