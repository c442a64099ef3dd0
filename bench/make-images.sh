#!/usr/bin/env bash
# Build the benchmark's guest-like disk images (cached).
#
#   bench/make-images.sh OUTDIR
#
# Produces in OUTDIR:
#   day1.raw  4 GiB raw sparse image, ext4 holding ~1.5 GB of real files
#             (hardlinked copies of /usr/share and parts of /usr/lib)
#   day2.raw  day1 with ~2-3% of its data changed deterministically
#             (files removed, rewritten and added with seeded random data)
#   big.raw   day1's content in a 64 GiB sparse disk (flat-memory check)
#   stamp     build parameters; if it matches, the images are reused
set -euo pipefail

OUT=${1:?usage: make-images.sh OUTDIR}
TARGET_BYTES=${TARGET_BYTES:-1500000000}   # ~1.5 GB of file data in the image
IMG_SIZE=4G
BIG_SIZE=64G
SEED=${IMAGE_SEED:-20240601}
STAMP="v5 target=$TARGET_BYTES size=$IMG_SIZE big=$BIG_SIZE seed=$SEED"

export PATH=$PATH:/usr/sbin:/sbin
need() { # need CMD PKG: install the Debian package if the command is missing
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "installing $2" >&2
    [[ -n ${APT_UPDATED:-} ]] || { apt-get update -qq; APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need mkfs.ext4 e2fsprogs
need debugfs e2fsprogs
need python3 python3

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [[ -f $OUT/stamp && $(cat "$OUT/stamp") == "$STAMP" \
      && -f $OUT/day1.raw && -f $OUT/day2.raw && -f $OUT/big.raw ]]; then
    echo "images cached in $OUT ($STAMP)"
    exit 0
fi
rm -f "$OUT/stamp" "$OUT/day1.tmp" "$OUT/day1.raw" "$OUT/day2.raw" "$OUT/big.raw"

# --- staging tree: hardlinks (cheap) when on the same filesystem as /usr ---
STAGING=$OUT/staging
rm -rf "$STAGING"
mkdir -p "$STAGING/usr/lib"
copy_tree() { # copy_tree SRC DESTDIR
    cp -al "$1" "$2" 2>/dev/null || { rm -rf "$2/$(basename "$1")"; cp -a "$1" "$2"; }
}
total=0
# Candidate trees in order, copied one top-level entry at a time so the total
# stops close to the target (the exact mix depends on the machine's packages).
for src in /usr/share /usr/lib/x86_64-linux-gnu /usr/lib/gcc /usr/lib/jvm /usr/lib; do
    [[ -d $src ]] || continue
    mkdir -p "$STAGING$src"
    for item in "$src"/*; do
        (( total >= TARGET_BYTES )) && break 2
        [[ -e $STAGING$item ]] && continue          # already staged (e.g. /usr/lib/gcc)
        [[ -L $item || -f $item || -d $item ]] || continue
        copy_tree "$item" "$STAGING$src"
        total=$(( total + $(du -sb --apparent-size "$item" | cut -f1) ))
    done
    echo "staged $src -> total $((total / 1000000)) MB"
done
# --- day1: fresh ext4 populated from the staging tree ---
# Fixed UUID, hash seed and time make the image reproducible for a given tree.
echo "mkfs.ext4 -d (this takes a minute)"
E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F \
    -U 6c1f5e2a-8d3b-4c7e-9a10-0123456789ab -E hash_seed=0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0 \
    -d "$STAGING" "$OUT/day1.tmp" "$IMG_SIZE"
cp --sparse=always "$OUT/day1.tmp" "$OUT/day1.raw"   # zeroed blocks become holes, as in a thin disk
rm -f "$OUT/day1.tmp"

# --- day2: copy, then change ~2.5% of the data with debugfs ---
cp --sparse=always "$OUT/day1.raw" "$OUT/day2.raw"
CHG=$OUT/changes
rm -rf "$CHG"; mkdir -p "$CHG"
# Pick files to delete / rewrite deterministically (sorted list, seeded choice)
# and generate new content: half random (incompressible), half log-like text.
python3 - "$STAGING" "$CHG" "$SEED" "$TARGET_BYTES" <<'PY'
import os, random, sys
staging, chg, seed, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
files = []
for root, dirs, names in os.walk(staging):
    dirs.sort()
    for n in sorted(names):
        p = os.path.join(root, n)
        if os.path.isfile(p) and not os.path.islink(p):
            sz = os.path.getsize(p)
            if 64 * 1024 <= sz <= 8 << 20:   # skip huge files: keep changes spread
                files.append((p[len(staging):], sz))
rng.shuffle(files)
budget_rewrite = target * 12 // 1000   # ~1.2% rewritten in place (same path, new data)
budget_new = target * 12 // 1000       # ~1.2% new files
budget_rm = target * 5 // 1000         # ~0.5% deleted (frees blocks, metadata change)
cmds = []
def gen(path, size, text):
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 1 << 20)
            if text:
                words = [b"GET", b"POST", b"/api/v1/items", b"200", b"404", b"user=%d" % rng.randrange(10**6),
                         b"latency_ms=%d" % rng.randrange(5000), b"INFO", b"WARN", b"session"]
                buf = bytearray()
                while len(buf) < n:
                    buf += b"2024-06-%02d %s\n" % (rng.randrange(1, 29), b" ".join(rng.choice(words) for _ in range(8)))
                f.write(bytes(buf[:n]))
            else:
                f.write(rng.randbytes(n))
            left -= n
i = 0
used = 0
while used < budget_rewrite and files:        # rewrite: rm + write same size
    path, sz = files.pop()
    src = os.path.join(chg, "rw%d" % i); i += 1
    gen(src, sz, text=(i % 2 == 0))
    cmds += ['rm "%s"' % path, 'write %s "%s"' % (src, path)]
    used += sz
used = 0
while used < budget_rm and files:             # delete
    path, sz = files.pop()
    cmds.append('rm "%s"' % path)
    used += sz
cmds.append("mkdir /var"); cmds.append("mkdir /var/log"); cmds.append("mkdir /var/cache")
used = 0
while used < budget_new:                      # new files of 4 KiB .. 4 MiB
    sz = rng.choice([4096, 65536, 300000, 1 << 20, 4 << 20])
    src = os.path.join(chg, "new%d" % i); i += 1
    text = (i % 2 == 0)
    gen(src, sz, text)
    cmds.append('write %s "/var/%s/new%d.%s"' % (src, "log" if text else "cache", i, "log" if text else "bin"))
    used += sz
with open(os.path.join(chg, "debugfs.cmds"), "w") as f:
    f.write("\n".join(cmds) + "\n")
print("day2: %d debugfs commands" % len(cmds))
PY
E2FSPROGS_FAKE_TIME=1700086400 debugfs -w -f "$CHG/debugfs.cmds" "$OUT/day2.raw" >"$CHG/debugfs.log" 2>&1
if grep -qiE 'error|not found|could not' "$CHG/debugfs.log"; then
    echo "debugfs reported problems:" >&2; grep -iE 'error|not found|could not' "$CHG/debugfs.log" | head >&2; exit 1
fi
# the day-2 filesystem must be consistent
e2fsck -fn "$OUT/day2.raw" >"$CHG/fsck.log" 2>&1 || { cat "$CHG/fsck.log" >&2; exit 1; }

# --- big: same content in a 64 GiB sparse disk ---
cp --sparse=always "$OUT/day1.raw" "$OUT/big.raw"
truncate -s "$BIG_SIZE" "$OUT/big.raw"

rm -rf "$STAGING" "$CHG"
echo "$STAMP" >"$OUT/stamp"
for f in day1 day2 big; do
    printf '%-9s apparent %14d  allocated %14d\n' "$f.raw" \
        "$(stat -c %s "$OUT/$f.raw")" "$(du -B1 "$OUT/$f.raw" | cut -f1)"
done
