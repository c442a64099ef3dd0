#!/usr/bin/env bash
# A backup through agents vs the same backup on the backup server alone.
#
#   bench/agents.sh [DATA_MIB] [RUNS]        # defaults 1536 and 3
#
# Three network namespaces joined by veth pairs on a bridge (a clean link): the backup server
# (10.233.0.1), a proxy agent (10.233.0.2) and a repository agent (10.233.0.3). The VM is one
# raw disk in an image folder all three see. For each run a new repository is added (so every
# backup is a full): "local" = the server's own proxy writing a repository on the server's
# disk; "agents" = the proxy agent reading and sending over 5 TLS streams to the repository
# agent, which runs the engine and writes. Throughput = bytes read / the session's duration.
# Needs root and iproute2. Everything runs on this machine's cores, so the agent path pays
# for TLS on both ends on the same CPUs the engine uses: check the load average printed first.
set -euo pipefail
cd "$(dirname "$0")/.."

data_mib=${1:-1536}
runs=${2:-3}

if [[ $(id -u) != 0 ]]; then
    echo "bench/agents.sh needs root (network namespaces)" >&2
    exit 1
fi
command -v ip >/dev/null || { echo "ip not found: apt-get install iproute2" >&2; exit 1; }

cargo build --release --locked -q -p cairn
bin=$PWD/target/release/cairn
work=$(mktemp -d /var/tmp/cairn-bench-agents.XXXXXX)
tag=cba$$
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in srv prx rep lan; do ip netns delete "$tag-$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# --- network: a bridge in its own namespace, one veth per host --------------------------------
ip netns add "$tag-lan"
ip -n "$tag-lan" link add br0 type bridge
ip -n "$tag-lan" link set br0 up
n=1
for host in srv prx rep; do
    ip netns add "$tag-$host"
    ip link add "$tag$host" type veth peer name "$tag${host}b"
    ip link set "$tag$host" netns "$tag-$host"
    ip link set "$tag${host}b" netns "$tag-lan"
    ip -n "$tag-lan" link set "$tag${host}b" master br0 up
    ip -n "$tag-$host" addr add "10.233.0.$n/24" dev "$tag$host"
    ip -n "$tag-$host" link set "$tag$host" up
    ip -n "$tag-$host" link set lo up
    n=$((n + 1))
done
nsx() { local ns=$1; shift; ip netns exec "$tag-$ns" "$@"; }

# --- data: one raw disk, half random, half compressible text ------------------------------------
mkdir -p "$work/images/web01"
half=$((data_mib / 2))
{ head -c "${half}M" /dev/urandom; head -c "${half}M" < <(base64 -w 76 /dev/urandom); } >"$work/images/web01/disk0.raw"
sync

# --- server and agents -----------------------------------------------------------------------
export HOME=$work/home CAIRN_ADMIN_PASSWORD=bench-password-123
mkdir -p "$HOME"
# In the background without a subshell, so $! is the process itself (ip netns exec execs it).
ip netns exec "$tag-srv" "$bin" server --data "$work/srv" --listen 10.233.0.1:8520 --name 10.233.0.1 \
    --default-repository "$work/default-repo" >"$work/server.log" 2>&1 &
pids+=($!)
url=https://10.233.0.1:8520
for _ in $(seq 100); do [[ -f $work/srv/ca.pem ]] && nsx srv curl -fsk "$url/api/v1/health" >/dev/null 2>&1 && break; sleep 0.2; done
echo "$CAIRN_ADMIN_PASSWORD" | nsx srv "$bin" --server "$url" --ca-cert "$work/srv/ca.pem" login "$url" --password-stdin >/dev/null
c() { nsx srv "$bin" "$@"; }
token() { c agent token --roles "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'; }
ip netns exec "$tag-prx" "$bin" agent --server "$url" --token "$(token proxy)" --ca-cert "$work/srv/ca.pem" --data "$work/prx" \
    --name prx01 >"$work/prx.log" 2>&1 &
pids+=($!)
ip netns exec "$tag-rep" "$bin" agent --server "$url" --token "$(token repository)" --ca-cert "$work/srv/ca.pem" --data "$work/rep" \
    --name rep01 >"$work/rep.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    [[ $(c agent list --json | python3 -c 'import json,sys; print(sum(a["state"]=="online" and a["address"] is not None for a in json.load(sys.stdin)))') == 2 ]] && break
    sleep 0.3
done
c host add image-folder --name hv1 --path "$work/images" >/dev/null

# session_figures SESSION → "read_bytes duration_secs bottleneck"
session_figures() {
    c session show "$1" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
st = s.get("statistics") or s["session"]["statistics"]
busy = ",".join(f"{k}={v:.0f}%" for k, v in st.get("busy", {}).items())
print(st["read_bytes"], st["duration_secs"], st.get("bottleneck", "") + "(" + busy + ")")'
}

run_one() { # run_one KIND N → prints MB/s
    local kind=$1 i=$2 repo=r-$1-$2
    if [[ $kind == local ]]; then
        c repository add "$repo" --path "$work/$repo" >/dev/null
    else
        c repository add "$repo" --agent rep01 --path "$work/$repo" >/dev/null
    fi
    c job create "j-$repo" --vm hv1/web01 --repository "$repo" --retain 3 --retries 0 >/dev/null
    # The previous run's written data must not be flushed during this one.
    sync
    local out session
    out=$(c job run "j-$repo" --wait 2>&1) || { echo "$out" >&2; exit 1; }
    session=$(sed -n 's/.*session \([0-9]*\) started.*/\1/p' <<<"$out" | head -1)
    read -r bytes secs bottleneck < <(session_figures "$session")
    python3 -c "print(f'{$bytes/$secs/1e6:.1f}')"
    echo "  $kind run $i: $(python3 -c "print(f'{$bytes/2**20:.0f} MiB in {$secs:.2f} s = {$bytes/$secs/1e6:.1f} MB/s')"), bottleneck $bottleneck" >&2
}

echo "== cairn backup through agents vs local, ${data_mib} MiB, $(nproc) cores, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
local_best=0
agent_best=0
for i in $(seq "$runs"); do
    # Alternate the order, so neither kind always runs on a warmer or busier machine.
    if ((i % 2)); then
        l=$(run_one local "$i")
        a=$(run_one agents "$i")
    else
        a=$(run_one agents "$i")
        l=$(run_one local "$i")
    fi
    local_best=$(python3 -c "print(max($local_best, $l))")
    agent_best=$(python3 -c "print(max($agent_best, $a))")
done
echo "best of $runs: local ${local_best} MB/s, through agents ${agent_best} MB/s, ratio $(python3 -c "print(f'{$agent_best/$local_best:.2f}')") x (target >= 0.8)"
