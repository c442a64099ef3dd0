#!/usr/bin/env bash
# One benchmark run: cairn against restic and borg on the same disk images.
#
#   bench/run.sh
#
# Environment (all optional):
#   BENCH_DIR           work dir (default /var/tmp/cairn-bench); images are
#                       cached in $BENCH_DIR/images, logs in $BENCH_DIR/logs
#   TOOLS               sections to run (default "read restic borg cairn")
#   CAIRN               cairn binary (default target/release/cairn, built if missing)
#   CAIRN_COMPRESSION   compression of the main cairn runs (default: cairn's own)
#   CAIRN_COMPRESSIONS  extra full backups, one per variant (default "zstd:1 zstd:3 lz4";
#                       set to "" to skip)
#   CAIRN_BLOCK_SIZE    passed as --block-size when set
#   BORG_ENC            borg encryption mode (default repokey: AES-CTR + HMAC-SHA256)
#   KEEP=1              keep repositories and restores in $BENCH_DIR/run
#
# Everything runs hot-cache (images are read once first).  Prints a markdown
# report and writes it to bench/results/latest.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
BENCH_DIR=${BENCH_DIR:-/var/tmp/cairn-bench}
IMG=$BENCH_DIR/images
RUN=$BENCH_DIR/run
LOGS=$BENCH_DIR/logs
TOOLS=${TOOLS:-"read restic borg cairn"}
CAIRN=${CAIRN:-$ROOT/target/release/cairn}
CAIRN_COMPRESSIONS=${CAIRN_COMPRESSIONS-"zstd:1 zstd:3 lz4"}
BORG_ENC=${BORG_ENC:-repokey}
RESULTS=$HERE/results
export PATH=$PATH:/usr/sbin:/sbin

# --- tools: install the Debian packages if something is missing ---
missing=()
for pair in restic:restic borg:borgbackup zstd:zstd lz4:lz4 mkfs.ext4:e2fsprogs \
            debugfs:e2fsprogs python3:python3; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[[ -x /usr/bin/time ]] || missing+=(time)
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- images (cached) and a clean work area ---
"$HERE/make-images.sh" "$IMG" >&2
D1=$IMG/day1.raw D2=$IMG/day2.raw BIG=$IMG/big.raw
rm -rf "$RUN" "$LOGS"
mkdir -p "$RUN/work" "$LOGS" "$RESULTS"
[[ ${KEEP:-} == 1 ]] || trap 'rm -rf "$RUN"' EXIT
ROWS=$RUN/rows.md     # detailed step rows, appended by every section
VALS=$RUN/values      # key=value results, read back for the summary
: >"$ROWS"; : >"$VALS"

# --- helpers ---
# measure ID CMD...: run CMD (stdout/stderr to $LOGS/ID.out/.err) and set
# WALL (seconds) and RSS (peak resident KiB, max over the process tree).
measure() {
    local id=$1; shift
    sync   # no pending writeback from the previous step
    if ! /usr/bin/time -f '%e %M' -o "$LOGS/$id.time" "$@" >"$LOGS/$id.out" 2>"$LOGS/$id.err"; then
        echo "FAILED step $id: $*" >&2
        tail -n 20 "$LOGS/$id.err" >&2
        return 1
    fi
    read -r WALL RSS <"$LOGS/$id.time"
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }       # bytes -> MiB
kib2mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }      # KiB -> MiB
dirsize() { du -sb "$1" | cut -f1; }
alloc() { du -B1 "$1" | cut -f1; }
# row TOOL STEP [SIZE_BYTES] [NOTE]: one line of the detailed table (uses WALL/RSS)
row() {
    local size=${3:-}
    [[ -n $size ]] && size="$(mib "$size") MiB"
    echo "| $1 | $2 | $WALL | $(kib2mib "$RSS") | $size | ${4:-} |" >>"$ROWS"
}
# stats ID: summary of a cairn backup's --json output (best effort)
stats() { python3 - "$LOGS/$1.out" <<'PY' 2>/dev/null || true
import json, sys
s = json.load(open(sys.argv[1]))["point"]["stats"]
m = lambda k: s.get(k, 0) / 1048576
print("read %.0f MiB, new %.0f MiB, stored %.0f MiB, bottleneck %s"
  % (m("read_bytes"), m("new_bytes"), m("stored_bytes"), s.get("bottleneck", "?")))
PY
}
note() { echo "| $1 | $2 | | | | $3 |" >>"$ROWS"; }
val() { echo "$1=$2" >>"$VALS"; }
get() { grep "^$1=" "$VALS" | tail -n 1 | cut -d= -f2- || true; }
# put IMAGE: make $RUN/work/disk.raw a fresh copy (new inode, new mtime) of IMAGE
put() { rm -f "$RUN/work/disk.raw"; cp --sparse=always --reflink=auto "$1" "$RUN/work/disk.raw"; }
# check_restore FILE TOOL: byte-identical to day2? sparse? -> note text
check_restore() {
    local f=$1 same=IDENTICAL
    cmp -s "$f" "$D2" || same="DIFFERS FROM DAY2"
    echo "$same to day2; allocated $(mib "$(alloc "$f")") of $(mib "$(stat -c %s "$f")") MiB"
    [[ $same == IDENTICAL ]] || { echo "$2 restore differs from day2" >&2; return 1; }
}
# section NAME: run section_NAME in a subshell with errexit; a failure is
# recorded and the other sections still run.
FAILED=()
section() {
    local rc=0
    set +e
    (set -e; "section_$1")
    rc=$?
    set -e
    if ((rc)); then
        FAILED+=("$1")
        note "$1" "**section failed**" "see $LOGS"
    fi
    rm -rf "${RUN:?}/work/"* "$RUN/restore"
}

LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
# --- warm the page cache once: all runs are hot-cache ---
cat "$D1" "$D2" >/dev/null
python3 - "$BIG" <<'PY'   # big.raw: read only its data, not 64 GiB of holes
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY); size = os.fstat(fd).st_size; pos = 0
while pos < size:
    try: s = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError: break
    e = os.lseek(fd, s, os.SEEK_HOLE)
    while s < e: s += len(os.pread(fd, min(8 << 20, e - s), s))
    pos = e
PY

# CBT simulation (the hypervisor's job, so not part of any backup's time)
measure changed-extents python3 "$HERE/changed-extents.py" "$D1" "$D2"
cp "$LOGS/changed-extents.out" "$RUN/cbt-day2.txt"
CBT_BYTES=$(awk '{ s += $2 } END { print s + 0 }' "$RUN/cbt-day2.txt")
CBT_N=$(wc -l <"$RUN/cbt-day2.txt")
row cbt "changed-extents.py day1 day2 (64 KiB granules)" "$CBT_BYTES" "$CBT_N extents changed"

section_read() {
    measure cat-day1 bash -c 'cat "$1" >/dev/null' _ "$D1"
    row read "cat day1.raw > /dev/null (read limit)" "" "4 GiB apparent"
    val read_wall "$WALL"
    measure zstd-day1 bash -c 'zstd -1 -T0 -c "$1" | wc -c' _ "$D1"
    row read "zstd -1 -T0 day1.raw" "$(cat "$LOGS/zstd-day1.out")" "size = compressed stream"
}

section_restic() {
    export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$RUN/restic-repo RESTIC_CACHE_DIR=$RUN/restic-cache
    cd "$RUN/work"
    measure restic-init restic init
    row restic "init" "" "repo format $(restic cat config 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])' || echo '?'), compression auto"
    put "$D1"
    measure restic-full restic backup --host bench disk.raw
    local s1; s1=$(dirsize "$RESTIC_REPOSITORY")
    row restic "full backup day1" "$s1" "repo size after"
    val restic_full_wall "$WALL"; val restic_full_rss "$RSS"; val restic_full_size "$s1"
    put "$D2"
    measure restic-incr restic backup --host bench disk.raw
    local s2; s2=$(dirsize "$RESTIC_REPOSITORY")
    row restic "incremental day2" "$s2" "repo size after (+$(mib $((s2 - s1))) MiB)"
    val restic_incr_wall "$WALL"; val restic_incr_rss "$RSS"; val restic_size "$s2"
    mkdir -p "$RUN/restore"
    measure restic-restore restic restore latest --target "$RUN/restore"
    local f msg; f=$(find "$RUN/restore" -type f -name disk.raw | head -n 1)
    msg=$(check_restore "$f" restic)
    row restic "restore latest" "" "$msg (0.14: no sparse restore)"
    val restic_restore_wall "$WALL"; val restic_restore_rss "$RSS"
    rm -rf "$RUN/restore"
    measure restic-check restic check --read-data
    row restic "check --read-data"
    val restic_verify_wall "$WALL"
}

section_borg() {
    export BORG_PASSPHRASE=bench BORG_REPO=$RUN/borg-repo BORG_BASE_DIR=$RUN/borg-base
    export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
    cd "$RUN/work"
    measure borg-init borg init -e "$BORG_ENC"
    row borg "init -e $BORG_ENC" "" "compression lz4 (borg's default)"
    put "$D1"
    measure borg-full borg create --compression lz4 ::day1 disk.raw
    local s1; s1=$(dirsize "$BORG_REPO")
    row borg "full backup day1" "$s1" "repo size after"
    val borg_full_wall "$WALL"; val borg_full_rss "$RSS"
    put "$D2"
    measure borg-incr borg create --compression lz4 ::day2 disk.raw
    local s2; s2=$(dirsize "$BORG_REPO")
    row borg "incremental day2" "$s2" "repo size after (+$(mib $((s2 - s1))) MiB)"
    val borg_incr_wall "$WALL"; val borg_incr_rss "$RSS"; val borg_size "$s2"
    mkdir -p "$RUN/restore"; cd "$RUN/restore"
    measure borg-restore borg extract --sparse ::day2
    local msg; msg=$(check_restore "$RUN/restore/disk.raw" borg)
    row borg "restore (extract --sparse)" "" "$msg"
    val borg_restore_wall "$WALL"; val borg_restore_rss "$RSS"
    cd "$RUN/work"; rm -rf "$RUN/restore"
    measure borg-check borg check --verify-data
    row borg "check --verify-data"
    val borg_verify_wall "$WALL"
}

section_cairn() {
    if [[ ! -x $CAIRN ]]; then
        (cd "$ROOT" && cargo build --release -p cairn) >"$LOGS/cairn-build.log" 2>&1 \
            || { echo "cairn build failed, see $LOGS/cairn-build.log" >&2; return 1; }
    fi
    if ! "$CAIRN" --help 2>/dev/null | grep -qw backup; then
        echo "$CAIRN --help does not list 'backup'" >&2; return 1
    fi
    # run a private copy: the binary may be rebuilt while the benchmark runs
    cp "$CAIRN" "$RUN/cairn"; CAIRN=$RUN/cairn
    export CAIRN_PASSWORD=bench
    local A=$RUN/cairn-aes B=$RUN/cairn-cbt s1 s2 v msg
    local bs=() backup=("$CAIRN" backup --vm bench --json)
    [[ -n ${CAIRN_BLOCK_SIZE:-} ]] && bs=(--block-size "$CAIRN_BLOCK_SIZE")
    backup+=("${bs[@]}")   # "${backup[@]}" --repo R [more options] DISK
    [[ -n ${CAIRN_COMPRESSION:-} ]] && backup+=(--compression "$CAIRN_COMPRESSION")
    cd "$RUN/work"

    # A: encrypted, full then incremental without CBT (re-reads all the data)
    measure cairn-init "$CAIRN" repo init "$A" --encryption aes-256-gcm
    row cairn "repo init (aes-256-gcm)" "" "RSS = key derivation"
    val cairn_init_rss "$RSS"
    put "$D1"
    measure cairn-full "${backup[@]}" --repo "$A" disk.raw
    s1=$(dirsize "$A")
    row cairn "full backup day1" "$s1" "repo size after; $(stats cairn-full)"
    val cairn_full_wall "$WALL"; val cairn_full_rss "$RSS"; val cairn_full_size "$s1"
    put "$D2"
    measure cairn-incr "${backup[@]}" --repo "$A" disk.raw
    s2=$(dirsize "$A")
    row cairn "incremental day2 (no CBT)" "$s2" "repo size after (+$(mib $((s2 - s1))) MiB); $(stats cairn-incr)"
    val cairn_incr_wall "$WALL"; val cairn_incr_rss "$RSS"; val cairn_size "$s2"
    measure cairn-points "$CAIRN" points --repo "$A" --vm bench --json
    row cairn "points --json"
    mkdir -p "$RUN/restore"
    measure cairn-restore "$CAIRN" restore --repo "$A" --vm bench --point latest --disk 0 --to "$RUN/restore/out.raw"
    msg=$(check_restore "$RUN/restore/out.raw" cairn)
    row cairn "restore latest" "" "$msg"
    val cairn_restore_wall "$WALL"; val cairn_restore_rss "$RSS"
    rm -rf "$RUN/restore"
    measure cairn-verify "$CAIRN" verify --repo "$A"
    row cairn "verify"
    val cairn_verify_wall "$WALL"
    rm -rf "$A"

    # B: encrypted, full then incremental WITH CBT (reads only changed extents)
    "$CAIRN" repo init "$B" --encryption aes-256-gcm >"$LOGS/cairn-cbt-init.out" 2>&1
    put "$D1"
    measure cairn-cbt-full "${backup[@]}" --repo "$B" disk.raw
    s1=$(dirsize "$B")
    put "$D2"
    measure cairn-cbt-incr "${backup[@]}" --repo "$B" --cbt "0=$RUN/cbt-day2.txt" disk.raw
    s2=$(dirsize "$B")
    row cairn "incremental day2 (--cbt)" "$s2" "repo size after (+$(mib $((s2 - s1))) MiB); $(stats cairn-cbt-incr)"
    val cairn_cbt_wall "$WALL"; val cairn_cbt_rss "$RSS"
    mkdir -p "$RUN/restore"
    measure cairn-cbt-restore "$CAIRN" restore --repo "$B" --vm bench --point latest --disk 0 --to "$RUN/restore/out.raw"
    msg=$(check_restore "$RUN/restore/out.raw" cairn)
    row cairn "restore latest (CBT chain)" "" "$msg"
    rm -rf "$RUN/restore" "$B"

    # C: unencrypted full, for information
    "$CAIRN" repo init "$RUN/cairn-plain" --encryption none >"$LOGS/cairn-plain-init.out" 2>&1
    put "$D1"
    measure cairn-plain-full "${backup[@]}" --repo "$RUN/cairn-plain" disk.raw
    row cairn "full backup day1, --encryption none" "$(dirsize "$RUN/cairn-plain")" "$(stats cairn-plain-full)"
    val cairn_plain_rss "$RSS"
    rm -rf "$RUN/cairn-plain"

    # D: the same content in a 64 GiB sparse disk: memory must stay flat
    "$CAIRN" repo init "$RUN/cairn-big" --encryption aes-256-gcm >"$LOGS/cairn-big-init.out" 2>&1
    measure cairn-big-full "${backup[@]}" --repo "$RUN/cairn-big" "$BIG"
    row cairn "full backup big.raw (64 GiB sparse)" "$(dirsize "$RUN/cairn-big")" \
        "peak RSS vs 4 GiB: $(kib2mib "$RSS") vs $(kib2mib "$(get cairn_full_rss)") MiB; $(stats cairn-big-full)"
    val cairn_big_wall "$WALL"; val cairn_big_rss "$RSS"
    rm -rf "$RUN/cairn-big"

    # E: one encrypted full backup per compression variant
    for v in $CAIRN_COMPRESSIONS; do
        "$CAIRN" repo init "$RUN/cairn-c" --encryption aes-256-gcm >"$LOGS/cairn-c-init.out" 2>&1
        measure "cairn-full-${v/:/}" "$CAIRN" backup --repo "$RUN/cairn-c" --vm bench --json \
            "${bs[@]}" --compression "$v" disk.raw
        row cairn "full backup day1, --compression $v" "$(dirsize "$RUN/cairn-c")" "$(stats "cairn-full-${v/:/}")"
        rm -rf "$RUN/cairn-c"
    done
}

for t in $TOOLS; do
    echo "== $t" >&2
    section "$t"
done

# --- report ---
ratio() { # ratio A B: A/B with 2 decimals, or - when a value is missing
    [[ -n $1 && -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }' || echo -
}
line() { # line LABEL KEY_RESTIC KEY_BORG KEY_CAIRN [bytes|kib|s]
    local r b c
    r=$(get "$2"); b=$(get "$3"); c=$(get "$4")
    fmt() { [[ -z $1 ]] && { echo -; return; }
            case ${2:-} in bytes) mib "$1" ;; kib) kib2mib "$1" ;; *) echo "$1" ;; esac; }
    echo "| $1 | $(fmt "$r" "${5:-}") | $(fmt "$b" "${5:-}") | $(fmt "$c" "${5:-}") | $(ratio "$c" "$r") |"
}
ver() { "$@" 2>/dev/null | head -n 1 || echo "?"; }
REPORT=$RUN/report.md
{
    echo "# cairn benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)," \
         "$(lscpu | sed -n 's/^Model name: *//p' | head -n 1). Hot page cache." \
         "Load average (1 min) at start $LOAD_START, at end $(cut -d' ' -f1 /proc/loadavg): other work on the machine skews wall times."
    echo "Versions: $(ver restic version | cut -d' ' -f1-2), $(ver borg --version), zstd $(ver zstd --version | grep -o 'v[0-9.]*' | head -n 1), cairn $(ver "$CAIRN" --version | awk '{ print $NF }')."
    echo "Images: day1.raw/day2.raw 4 GiB raw ext4, allocated $(mib "$(alloc "$D1")") / $(mib "$(alloc "$D2")") MiB;" \
         "day1→day2 changes $(mib "$CBT_BYTES") MiB in $CBT_N extents; big.raw = day1 content in 64 GiB."
    echo "restic: repo v2, compression auto (zstd), always encrypted. borg: -e $BORG_ENC, compression lz4 (default)." \
         "cairn: aes-256-gcm, compression ${CAIRN_COMPRESSION:-its default}${CAIRN_BLOCK_SIZE:+, block size $CAIRN_BLOCK_SIZE}."
    ((${#FAILED[@]})) && echo && echo "**Failed sections: ${FAILED[*]}** (logs in $LOGS)"
    echo
    echo "## Summary"
    echo
    echo "| metric | restic | borg | cairn | cairn/restic |"
    echo "|---|---:|---:|---:|---:|"
    line "full backup, wall s" restic_full_wall borg_full_wall cairn_full_wall
    line "incremental (no CBT), wall s" restic_incr_wall borg_incr_wall cairn_incr_wall
    line "incremental (CBT), wall s" restic_incr_wall borg_incr_wall cairn_cbt_wall
    line "restore latest, wall s" restic_restore_wall borg_restore_wall cairn_restore_wall
    line "verify (read all data), wall s" restic_verify_wall borg_verify_wall cairn_verify_wall
    line "repo size after day1+day2, MiB" restic_size borg_size cairn_size bytes
    line "peak RSS full, MiB" restic_full_rss borg_full_rss cairn_full_rss kib
    line "peak RSS incremental, MiB" restic_incr_rss borg_incr_rss cairn_incr_rss kib
    line "peak RSS restore, MiB" restic_restore_rss borg_restore_rss cairn_restore_rss kib
    line "full backup of 64 GiB sparse disk, wall s" - - cairn_big_wall
    line "peak RSS full of 64 GiB sparse disk, MiB" - - cairn_big_rss kib
    echo
    echo "The CBT row compares cairn's --cbt incremental with the others' full-read incrementals (they have no CBT input)."
    [[ -n $(get read_wall) ]] && echo "Read limit: cat day1.raw takes $(get read_wall) s."
    [[ -n $(get cairn_init_rss) ]] && echo "cairn's encrypted peak RSS includes the password key derivation:" \
        "\`repo init\` alone peaks at $(kib2mib "$(get cairn_init_rss)") MiB;" \
        "an unencrypted full backup peaks at $(kib2mib "$(get cairn_plain_rss)") MiB."
    echo
    echo "## Steps"
    echo
    echo "| tool | step | wall s | peak RSS MiB | size | notes |"
    echo "|---|---|---:|---:|---:|---|"
    cat "$ROWS"
} >"$REPORT"
cp "$REPORT" "$RESULTS/latest.md"
cat "$REPORT"
((${#FAILED[@]} == 0))
