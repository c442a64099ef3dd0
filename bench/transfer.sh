#!/usr/bin/env bash
# Data channel throughput (cairn-transfer): 5 streams vs 1 stream over a link with 20 ms
# delay and 0.1 % loss each way, and a clean veth link vs an in-process copy.
#
#   bench/transfer.sh [LOSSY_MIB] [CLEAN_MIB]      # defaults 192 and 2048
#
# Needs root and iproute2 (network namespaces, veth pairs, TUN devices). The delayed, lossy
# link is emulated in user space over TUN devices because this machine's kernel has no
# sch_netem (`tc qdisc add ... netem` fails); see crates/cairn-testnet.
# Runs once with the kernel's default TCP congestion control (bbr here) and once with reno,
# the classic loss-based one, where parallel streams matter most (cubic is not in this
# kernel's net.ipv4.tcp_allowed_congestion_control, so a namespace may not select it). Figures are single runs:
# check the load average printed first.
set -euo pipefail
cd "$(dirname "$0")/.."

lossy_mib=${1:-192}
clean_mib=${2:-2048}

if [[ $(id -u) != 0 ]]; then
    echo "bench/transfer.sh needs root (network namespaces)" >&2
    exit 1
fi
for tool in ip tc; do
    command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install iproute2" >&2; exit 1; }
done

cargo build --release --locked -q -p cairn-transfer --example transfer_bench
bin=target/release/examples/transfer_bench

echo "== cairn-transfer benchmark, $(nproc) cores, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
default_cc=$(sysctl -n net.ipv4.tcp_congestion_control)
echo
echo "### congestion control: $default_cc (kernel default)"
"$bin" "$lossy_mib" "$clean_mib"
if [[ $default_cc != reno ]]; then
    echo
    echo "### congestion control: reno"
    "$bin" "$lossy_mib" "$clean_mib" reno
fi
