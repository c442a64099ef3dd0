#!/usr/bin/env bash
# Live QEMU backup benchmark (docs/benchmarks.md): full vs incremental of a running VM, the
# guest's freeze time, instant recovery vs a local boot. Needs root (the guest image build),
# qemu-system-x86 and the prerequisites of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p cairn
bash scripts/guest-image.sh >/dev/null
python3 bench/live.py
