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

echo "== cairn repo init (encrypted with AES-256-GCM, the default; the password from CAIRN_PASSWORD)"
export CAIRN_PASSWORD=${CAIRN_PASSWORD:-demo-password}
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

echo
echo "== the same through the backup server: cairn server (HTTPS on 127.0.0.1, its own CA)"
mkdir -p "$demo/vms/web01"
cp --sparse=always "$disk" "$demo/vms/web01/disk0.raw"
export CAIRN_CONFIG_DIR=$demo/client
export CAIRN_ADMIN_PASSWORD=${CAIRN_ADMIN_PASSWORD:-demo-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 8520)
"$cairn" server --data "$demo/server" --listen "127.0.0.1:$port" --default-repository "$demo/server-repo" \
    >"$demo/server.log" 2>&1 &
server_pid=$!
trap 'kill $server_pid 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    grep -q "listening on" "$demo/server.log" && break
    kill -0 $server_pid 2>/dev/null || { cat "$demo/server.log"; exit 1; }
    sleep 0.1
done
sed 's/^/  server: /' "$demo/server.log"
echo "== cairn login"
echo "$CAIRN_ADMIN_PASSWORD" | "$cairn" login "https://127.0.0.1:$port" --user admin --password-stdin \
    --ca-cert "$demo/server/ca.pem"
echo "== cairn host add image-folder, cairn vm list"
"$cairn" host add image-folder --path "$demo/vms"
"$cairn" vm list
echo "== cairn job create nightly, cairn job run nightly --wait"
"$cairn" job create nightly --vm web01 --repository default --schedule "daily 22:00" --retain 14
"$cairn" job run nightly --wait
echo "== cairn session list, cairn session show"
"$cairn" session list
session=$("$cairn" --json session list --limit 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["sessions"][0]["id"])')
"$cairn" session show "$session"
echo "== cairn restore through the server (into its restore folder, $demo/server-restore)"
"$cairn" restore --repository default --vm web01 --point latest --disk 0 --to "$demo/server-restore/web01.raw"
cmp "$disk" "$demo/server-restore/web01.raw" && echo "restored through the server: byte-identical"
echo "== a restore the server refuses: outside its restore folders"
if "$cairn" restore --repository default --vm web01 --to "$demo/elsewhere.raw"; then
    echo "the server wrote outside its restore folders" >&2
    exit 1
fi
echo "== cairn audit list: who did what"
"$cairn" audit list --limit 8
kill $server_pid
wait $server_pid 2>/dev/null || true
