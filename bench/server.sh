#!/usr/bin/env bash
# Backup server benchmark: the server's own overhead per task, and API latency with a big history.
#
#   bench/server.sh
#
# 1. Overhead: backs up the benchmark image (bench/make-images.sh day1.raw, then day2.raw as the
#    same disk) once through `cairn server` (a job run) and once with `cairn backup` straight into
#    a repository, and reports the task's wall time as the server saw it against the engine's own
#    time and against the direct CLI run.
# 2. Latency: seeds the configuration database with JOBS jobs and SESSIONS sessions (one task
#    each), then measures session listing pages (first page, a page deep in the history, one job's
#    sessions) and the job list with wrk on loopback: requests/s, p50, p99. Against SQLite and,
#    unless BENCH_POSTGRES=0, PostgreSQL (a throwaway cluster from scripts/postgres-for-tests.sh).
#
# Environment: BENCH_DIR (default /var/tmp/cairn-bench), JOBS (1000), SESSIONS (100000),
# WRK_SECONDS (15), WRK_CONNECTIONS (8). Prints a markdown report, also in
# bench/results/server-latest.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
BENCH_DIR=${BENCH_DIR:-/var/tmp/cairn-bench}
JOBS=${JOBS:-1000}
SESSIONS=${SESSIONS:-100000}
WRK_SECONDS=${WRK_SECONDS:-15}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-8}
W=$BENCH_DIR/server
OUT=$HERE/results/server-latest.md
export PATH=$PATH:/usr/sbin:/sbin

missing=()
for pair in wrk:wrk curl:curl jq:jq; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

(cd "$ROOT" && cargo build --release --locked -p cairn -p cairn-server --example seed >&2)
CAIRN=$ROOT/target/release/cairn
SEED=$ROOT/target/release/examples/seed
"$HERE/make-images.sh" "$BENCH_DIR/images" >&2
D1=$BENCH_DIR/images/day1.raw
D2=$BENCH_DIR/images/day2.raw

rm -rf "$W"
mkdir -p "$W/results"
SERVER_PID=
cleanup() {
    [[ -z $SERVER_PID ]] || kill "$SERVER_PID" 2>/dev/null || true
    [[ -z ${CAIRN_TEST_POSTGRES_STOP:-} || -n ${KEEP_PG:-} ]] || eval "$CAIRN_TEST_POSTGRES_STOP" || true
    [[ ${KEEP:-} == 1 ]] || rm -rf "$W"
}
trap cleanup EXIT
export CAIRN_CONFIG_DIR=$W/client CAIRN_ADMIN_PASSWORD=bench-password

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_server DATA [ARGS...]: starts the server, waits for its "listening on" line, logs in.
start_server() {
    local data=$1
    shift
    PORT=$(port)
    "$CAIRN" server --data "$data" --listen "127.0.0.1:$PORT" "$@" >"$data.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 600); do
        grep -q "listening on" "$data.log" 2>/dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$data.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "$CAIRN_ADMIN_PASSWORD" | "$CAIRN" login "https://127.0.0.1:$PORT" --user admin --password-stdin \
        --ca-cert "$data/ca.pem" >/dev/null
    TOKEN=$(jq -r .token "$CAIRN_CONFIG_DIR/client.json")
}
stop_server() {
    kill "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}
now() { date +%s.%N; }

# --- 1. overhead per task ---
mkdir -p "$W/vms/bench" "$W/direct-disk"
ln -s "$D1" "$W/vms/bench/disk0.raw"
start_server "$W/data" --default-repository "$W/repo"
"$CAIRN" host add image-folder --path "$W/vms" --name bench >/dev/null
"$CAIRN" job create bench --vm bench --repository default >/dev/null
cat "$D1" "$D2" >/dev/null
declare -A srv_wall srv_engine srv_session
for run in full incremental unchanged; do
    [[ $run == full ]] || ln -sf "$D2" "$W/vms/bench/disk0.raw"
    "$CAIRN" --json job run bench --wait >"$W/results/server-$run.json"
    srv_wall[$run]=$(jq '[.tasks[].statistics.wall_secs] | add' "$W/results/server-$run.json")
    srv_engine[$run]=$(jq '[.tasks[].statistics.duration_secs] | add' "$W/results/server-$run.json")
    srv_session[$run]=$(python3 -c 'import json,sys,datetime as d
s=json.load(open(sys.argv[1]))["session"]
t=lambda x: d.datetime.fromisoformat(x.replace("Z","+00:00"))
print(round((t(s["ended_at"])-t(s["started_at"])).total_seconds(),3))' "$W/results/server-$run.json")
done
stop_server
# The same disk straight into a repository with the CLI (same defaults: zstd:3, 1 MiB, AES-256-GCM).
export CAIRN_PASSWORD=bench-password
"$CAIRN" --quiet repo init --encryption aes-256-gcm "$W/direct" >/dev/null
declare -A cli_wall cli_engine
for run in full incremental unchanged; do
    disk=$D1
    [[ $run == full ]] || disk=$D2
    ln -sf "$disk" "$W/direct-disk/disk0.raw"
    t0=$(now)
    "$CAIRN" --json backup --repo "$W/direct" --vm bench "$W/direct-disk/disk0.raw" >"$W/results/cli-$run.json"
    t1=$(now)
    cli_wall[$run]=$(echo "$t1 - $t0" | bc -l)
    cli_engine[$run]=$(jq '.point.stats.duration_secs' "$W/results/cli-$run.json")
done

# --- 2. API latency with a big history ---
# wrk_row LABEL PATH: one table row from a wrk run against the running server.
wrk_row() {
    local label=$1 path=$2 out
    out=$(wrk -t2 -c"$WRK_CONNECTIONS" -d"${WRK_SECONDS}s" --latency -H "Authorization: Bearer $TOKEN" \
        "https://127.0.0.1:$PORT$path")
    local rps p50 p99 errors
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    errors=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    echo "| $label | \`$path\` | $rps | $p50 | $p99 | ${errors:-0} |"
}
latency_rows() { # BACKEND DATA DB_URL [SERVER ARGS...]
    local backend=$1 data=$2 url=$3
    shift 3
    start_server "$data" --default-repository "$data-repo" "$@"
    stop_server
    local t0 t1
    t0=$(now)
    "$SEED" "$url" "$JOBS" "$SESSIONS" 2>"$data.seed.log"
    t1=$(now)
    echo "seeded $JOBS jobs and $SESSIONS sessions into $backend in $(printf %.0f "$(echo "$t1 - $t0" | bc -l)") s" >&2
    start_server "$data" "$@"
    local first deep job
    first=$(curl -sf --cacert "$data/ca.pem" -H "Authorization: Bearer $TOKEN" \
        "https://127.0.0.1:$PORT/api/v1/sessions?limit=50" | jq -r '.sessions | length')
    [[ $first == 50 ]] || { echo "session listing returned $first sessions, expected 50" >&2; exit 1; }
    # A cursor half a year back: a page in the middle of the history.
    deep="$(( ($(date +%s) - 182 * 86400) * 1000000 )).$((SESSIONS / 2))"
    job=$(curl -sf --cacert "$data/ca.pem" -H "Authorization: Bearer $TOKEN" \
        "https://127.0.0.1:$PORT/api/v1/jobs" | jq '.[500 % length].id')
    wrk_row "$backend: newest sessions" "/api/v1/sessions?limit=50"
    wrk_row "$backend: sessions half a year back" "/api/v1/sessions?limit=50&cursor=$deep"
    wrk_row "$backend: one job's sessions" "/api/v1/sessions?job=$job&limit=50"
    wrk_row "$backend: all $JOBS jobs" "/api/v1/jobs"
    stop_server
}
ROWS=$W/rows.md
latency_rows SQLite "$W/lat-sqlite" "sqlite://$W/lat-sqlite/cairn.db" >"$ROWS"
if [[ ${BENCH_POSTGRES:-1} != 0 ]]; then
    if [[ -z ${CAIRN_TEST_POSTGRES_URL:-} ]]; then
        eval "$(bash "$ROOT/scripts/postgres-for-tests.sh")"
    fi
    pg_db="cairn_bench_$$"
    psql "$CAIRN_TEST_POSTGRES_URL" -qc "CREATE DATABASE $pg_db" >/dev/null
    pg_url="${CAIRN_TEST_POSTGRES_URL%/*}/$pg_db"
    latency_rows PostgreSQL "$W/lat-pg" "$pg_url" --database "$pg_url" >>"$ROWS"
fi

ratio() { echo "scale=4; $1 / $2" | bc -l | sed 's/^\./0./'; }
pct() { echo "scale=2; ($1 - $2) * 100 / $1" | bc -l | sed 's/^\./0./; s/^-\./-0./'; }
{
    echo "## Backup server ($(date -u +%Y-%m-%d), $(nproc) cores)"
    echo
    echo "Overhead per task: the benchmark image (day1.raw, then day2.raw, then day2.raw again) backed up by"
    echo "a job of the server and by \`cairn backup\` into a repository of its own. The server derives a"
    echo "repository's keys once (its first session after start); \`cairn backup\` does in every run."
    echo
    echo "| run | session wall (API call to end) | engine time | server overhead (session − engine) | direct \`cairn backup\` wall (engine) | session / direct |"
    echo "|---|---|---|---|---|---|"
    for run in full incremental unchanged; do
        over=$(echo "${srv_session[$run]} - ${srv_engine[$run]}" | bc -l | sed 's/^\./0./')
        echo "| $run | ${srv_session[$run]} s | $(printf %.3f "${srv_engine[$run]}") s | $(printf %.3f "$over") s = $(pct "${srv_session[$run]}" "${srv_engine[$run]}") % | $(printf %.3f "${cli_wall[$run]}") s ($(printf %.3f "${cli_engine[$run]}") s) | $(ratio "${srv_session[$run]}" "${cli_wall[$run]}") |"
    done
    echo
    echo "API latency with $JOBS jobs and $SESSIONS sessions (wrk, $WRK_CONNECTIONS connections, ${WRK_SECONDS} s, HTTPS on loopback):"
    echo
    echo "| what | path | requests/s | p50 | p99 | non-2xx |"
    echo "|---|---|---|---|---|---|"
    cat "$ROWS"
} | tee "$OUT"
