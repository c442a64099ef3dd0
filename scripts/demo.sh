#!/usr/bin/env bash
# cairn's main job on its defaults, on one machine, with no server: build cairn,
# make a small VM disk image, back it up twice (full, then incremental), list
# the restore points, restore the latest one, check it is byte-identical, and
# run a health check. Everything lands in ./cairn-demo (override with DEMO_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
demo=${DEMO_DIR:-$PWD/cairn-demo}

cargo build --release -q -p cairn
cairn=$PWD/target/release/cairn
rm -rf "$demo" && mkdir -p "$demo"

disk=$demo/web01-disk0.raw
echo "== making a 1 GiB sparse disk image with an ext4 file system ($disk)"
truncate -s 1G "$disk"
if command -v mkfs.ext4 >/dev/null; then
    mkfs.ext4 -q -F -d /usr/share/doc "$disk"
else
    # No e2fsprogs: some real bytes at a few places are enough to show the flow.
    for i in 0 100 400; do head -c 8M /bin/* 2>/dev/null | dd of="$disk" bs=1M seek=$i conv=notrunc status=none; done
fi

echo "== cairn repo init"
"$cairn" repo init "$demo/repo"
echo "== cairn backup (full)"
"$cairn" backup --repo "$demo/repo" --vm web01 "$disk"
echo "== changing 4 MiB of the disk, then cairn backup (incremental)"
head -c 4M /dev/urandom | dd of="$disk" bs=1M seek=700 conv=notrunc status=none
"$cairn" backup --repo "$demo/repo" --vm web01 "$disk"
echo "== cairn points"
"$cairn" points --repo "$demo/repo"
echo "== cairn restore"
"$cairn" restore --repo "$demo/repo" --vm web01 --point latest --disk 0 --to "$demo/restored.raw"
cmp "$disk" "$demo/restored.raw" && echo "restored image is byte-identical to the source"
echo "== cairn restore --format vhdx (for Hyper-V), then cairn disk info"
"$cairn" restore --repo "$demo/repo" --vm web01 --point latest --disk 0 --format vhdx --to "$demo/restored.vhdx"
"$cairn" disk info "$demo/restored.vhdx"
"$cairn" disk convert "$demo/restored.vhdx" --to "$demo/roundtrip.raw"
cmp "$disk" "$demo/roundtrip.raw" && echo "the VHDX holds the same disk"
echo "== cairn verify"
"$cairn" verify --repo "$demo/repo"
echo "== cairn retain --keep 1"
"$cairn" retain --repo "$demo/repo" --vm web01 --keep 1
"$cairn" verify --repo "$demo/repo"
