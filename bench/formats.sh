#!/usr/bin/env bash
# Disk format benchmark: cairn's qcow2/VHDX/VHD readers against `cat`, and
# its writers against `qemu-img convert`, on the same image in one run.
#
#   bench/formats.sh
#
# Read: throughput of `cairn disk check IMG` (reads every allocated byte
# through cairn's reader) against `cat` of a dense raw file holding exactly the
# same allocated data. Write: `cairn disk convert RAW --format F` and
# `cairn restore --format F` against `qemu-img convert -O F RAW` followed by
# `sync` of the output (cairn's writers fsync before they return; qemu-img
# does not). Hot cache: every input is read once first. Best of $REPEAT runs.
#
# Environment: BENCH_DIR (default /var/tmp/cairn-bench), CAIRN (default
# target/release/cairn, built if missing), REPEAT (default 3).
# Prints a markdown report and writes it to bench/results/formats.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
BENCH_DIR=${BENCH_DIR:-/var/tmp/cairn-bench}
CAIRN=${CAIRN:-$ROOT/target/release/cairn}
REPEAT=${REPEAT:-3}
WORK=$BENCH_DIR/formats
export PATH=$PATH:/usr/sbin:/sbin

command -v qemu-img >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils; }
bash "$HERE/make-images.sh" "$BENCH_DIR/images" >&2
[[ -x $CAIRN ]] || (cd "$ROOT" && cargo build --release --locked -p cairn >&2)

rm -rf "$WORK"
mkdir -p "$WORK" "$ROOT/bench/results"
SRC=$BENCH_DIR/images/day1.raw

# best_of CMD...: the best wall time in seconds over $REPEAT runs.
best_of() {
    local best="" t s e
    for _ in $(seq "$REPEAT"); do
        [[ -n ${BEFORE:-} ]] && eval "$BEFORE"
        s=$(date +%s.%N)
        "$@" >/dev/null
        e=$(date +%s.%N)
        t=$(echo "$e - $s" | bc -l)
        if [[ -z $best ]] || (($(echo "$t < $best" | bc -l))); then best=$t; fi
    done
    printf '%.3f' "$best"
}
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
mbs() { printf '%.0f' "$(echo "$1 / $2 / 1048576" | bc -l)"; }

# The allocated data of the source as one dense file: what `cat` reads.
python3 - "$SRC" "$WORK/dense.raw" <<'EOF'
import json, subprocess, sys
src, out = sys.argv[1], sys.argv[2]
m = json.loads(subprocess.check_output(["qemu-img", "map", "--output=json", "-f", "raw", src]))
with open(src, "rb") as f, open(out, "wb") as o:
    for e in m:
        if e["data"]:
            f.seek(e["start"]); left = e["length"]
            while left:
                b = f.read(min(left, 8 << 20)); o.write(b); left -= len(b)
EOF
DATA=$(stat -c %s "$WORK/dense.raw")

qemu-img convert -O qcow2 "$SRC" "$WORK/in.qcow2"
qemu-img convert -O vhdx -o subformat=dynamic "$SRC" "$WORK/in.vhdx"
qemu-img convert -O vpc -o subformat=dynamic "$SRC" "$WORK/in.vhd"
cat "$WORK"/dense.raw "$WORK"/in.* "$SRC" >/dev/null

t_cat=$(best_of cat "$WORK/dense.raw")
{
echo "# Disk formats: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
echo
echo "Source: $(basename "$SRC"), $(numfmt --to=iec "$(stat -c %s "$SRC")") virtual, $(numfmt --to=iec "$DATA") allocated. Hot cache, best of $REPEAT."
echo
echo "## Read (allocated data through cairn's reader vs cat of the same data)"
echo
echo "| image | cairn s | MiB/s | cat s | MiB/s | ratio (≥ 0.9) |"
echo "|---|---|---|---|---|---|"
for f in qcow2 vhdx vhd; do
    t=$(best_of "$CAIRN" -q disk check "$WORK/in.$f")
    echo "| $f | $t | $(mbs "$DATA" "$t") | $t_cat | $(mbs "$DATA" "$t_cat") | $(ratio "$t_cat" "$t") |"
done
echo
echo "## Write (new image from raw; qemu-img convert + sync vs cairn)"
echo
BEFORE=""
"$CAIRN" -q repo init --encryption none "$WORK/repo" >/dev/null
"$CAIRN" -q backup --repo "$WORK/repo" --vm bench "$SRC" >/dev/null
BEFORE="rm -f $WORK/r.raw"; t_raw=$(best_of "$CAIRN" -q restore --repo "$WORK/repo" --vm bench --to "$WORK/r.raw")
echo "A restore also reads, checks and decompresses every block (unencrypted repository): the same restore to a sparse raw file took $t_raw s."
echo
echo "| format | qemu-img s | cairn disk convert s | ratio (≥ 0.8) | cairn restore s | ratio |"
echo "|---|---|---|---|---|---|"
for f in qcow2 vhdx vhd; do
    q=$f; [[ $f == vhd ]] && q=vpc
    BEFORE="rm -f $WORK/q.$f"; t_q=$(best_of bash -c "qemu-img convert -O $q '$SRC' '$WORK/q.$f' && sync '$WORK/q.$f'")
    BEFORE="rm -f $WORK/c.$f"; t_c=$(best_of "$CAIRN" -q disk convert "$SRC" --format "$f" --to "$WORK/c.$f")
    BEFORE="rm -f $WORK/r.$f"; t_r=$(best_of "$CAIRN" -q restore --repo "$WORK/repo" --vm bench --format "$f" --to "$WORK/r.$f")
    qemu-img compare -q -f raw -F "$q" "$SRC" "$WORK/c.$f"
    qemu-img compare -q -f raw -F "$q" "$SRC" "$WORK/r.$f"
    echo "| $f | $t_q | $t_c | $(ratio "$t_q" "$t_c") | $t_r | $(ratio "$t_q" "$t_r") |"
done
} | tee "$ROOT/bench/results/formats.md"
rm -rf "$WORK"
