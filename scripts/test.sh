#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, then runs it.
# Needs root (or sudo) for apt and for the tests that mount a tmpfs.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

# Real tools the tests drive: qemu-img/qemu-io (make and compare images),
# mkfs.ext4/debugfs/e2fsck and mkntfs/ntfscp (real file systems in test
# images), vhdimount/vhdiinfo (libvhdi: an independent VHD/VHDX reader, through
# FUSE), util-linux (mount), strace (crash-safety tests kill cairn on entering a
# chosen system call).
need_apt=()
command -v qemu-img >/dev/null || need_apt+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
command -v debugfs >/dev/null || need_apt+=(e2fsprogs)
command -v mount >/dev/null || need_apt+=(mount)
command -v strace >/dev/null || need_apt+=(strace)
command -v mkntfs >/dev/null || [ -x /usr/sbin/mkntfs ] || need_apt+=(ntfs-3g)
command -v vhdimount >/dev/null || need_apt+=(libvhdi-utils)
command -v fusermount >/dev/null || need_apt+=(fuse3)
command -v cc >/dev/null || need_apt+=(gcc)
command -v python3 >/dev/null || need_apt+=(python3)
command -v psql >/dev/null || need_apt+=(postgresql-client)
# curl: an independent HTTP/2 client for the API's refusals (hyper's own client hides a reset).
command -v curl >/dev/null || need_apt+=(curl)
# Live-VM tests: qemu-system-x86_64 (guests under TCG), qemu-storage-daemon,
# nbdinfo/nbdcopy and nbdkit (independent NBD peers), debootstrap (the Debian
# guest image, scripts/guest-image.sh).
command -v nbdinfo >/dev/null || need_apt+=(libnbd-bin)
command -v nbdkit >/dev/null || need_apt+=(nbdkit)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need_apt+=(debootstrap)
command -v extlinux >/dev/null || need_apt+=(extlinux syslinux-common)
# Data mover tests: network namespaces, veth pairs, bridges, TUN devices (iproute2).
command -v ip >/dev/null || need_apt+=(iproute2)
command -v tc >/dev/null || need_apt+=(iproute2)
need_qemu_system=0
command -v qemu-system-x86_64 >/dev/null || need_qemu_system=1
if [ ${#need_apt[@]} -gt 0 ] || [ "$need_qemu_system" = 1 ]; then
    $SUDO apt-get update -qq
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
# libvirt host tests: the tests start libvirtd and virtlogd themselves (no systemd); libvirt-dev
# and pkg-config build the binding to libvirt's C library. After QEMU: libvirt's QEMU driver
# must not pull another qemu-system-x86.
need_libvirt=()
command -v libvirtd >/dev/null || need_libvirt+=(libvirt-daemon-system libvirt-daemon-driver-qemu)
command -v virsh >/dev/null || need_libvirt+=(libvirt-clients)
[ -e /usr/include/libvirt/libvirt.h ] || need_libvirt+=(libvirt-dev)
command -v pkg-config >/dev/null || need_libvirt+=(pkg-config)
if [ ${#need_apt[@]} -eq 0 ] && [ "$need_qemu_system" = 0 ] && [ ${#need_libvirt[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
fi
if [ "$need_qemu_system" = 1 ]; then
    # Debian's qemu-system-x86 needs qemu-utils of its own version: pin both
    # (a newer qemu-utils installed from elsewhere is replaced).
    v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --allow-downgrades \
        "qemu-system-x86=$v" "qemu-utils=$v"
fi
if [ ${#need_libvirt[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_libvirt[@]}"
fi

# schemathesis (PyPI), which tries the server's API against its OpenAPI document
# (crates/cairn-cli/tests/api_conformance.rs): a virtual environment of the pinned version,
# outside the clone.
st_version=$(cat scripts/schemathesis-version)
st_dir="${HOME:-/root}/.cache/cairn/schemathesis-$st_version"
if [ ! -x "$st_dir/bin/schemathesis" ]; then
    python3 -m venv --help >/dev/null 2>&1 || {
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv
    }
    rm -rf "$st_dir"
    python3 -m venv "$st_dir"
    "$st_dir/bin/pip" install -q "schemathesis==$st_version"
fi

# A throwaway PostgreSQL cluster: the configuration database's tests run against
# it as well as against SQLite (installs Debian's postgresql when missing).
eval "$(bash scripts/postgres-for-tests.sh)"
log=$(mktemp)
trap 'rm -f "$log"; eval "$CAIRN_TEST_POSTGRES_STOP"' EXIT

# Disk: the build takes about 15 GB and the image tests several more (their
# cache is /var/tmp/cairn-test-cache). Say what is free before and after, so a
# "No space left on device" can be told from a bug.
disk_free() {
    echo "disk free ($1): $(df -h --output=avail "${CARGO_TARGET_DIR:-target}" 2>/dev/null | tail -1 | tr -d ' ') \
for the build, $(df -h --output=avail /var/tmp | tail -1 | tr -d ' ') in /var/tmp"
}
mkdir -p "${CARGO_TARGET_DIR:-target}"
disk_free "before the tests"
# A one-off build (CI) gains nothing from incremental compilation's caches.
[ -n "${CI:-}" ] && export CARGO_INCREMENTAL=0
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
disk_free "after the tests"
passed=$(grep -oE 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -oE '[0-9]+ failed;' "$log" | awk '{s += $1} END {print s + 0}')

# Fuzz smoke run of every parser target (nightly + cargo-fuzz), unless disabled.
if [ "$status" = 0 ] && [ "${CAIRN_FUZZ_SECONDS:-20}" != 0 ]; then
    bash scripts/fuzz-smoke.sh "${CAIRN_FUZZ_SECONDS:-20}"
fi

# The ten slowest test binaries (cargo names each before its tests and times it after).
echo "slowest test binaries:"
awk '/^ *Running / { name = $2; if (name == "unittests") { d = $NF; sub(/.*\//, "", d); sub(/-[0-9a-f]+\)$/, "", d); name = "unit tests of " d } }
     /^ *Doc-tests / { name = "doc-tests " $2 }
     /test result:/ { for (i = 1; i <= NF; i++) if ($i == "in") { t = $(i + 1); sub(/s$/, "", t); print t, name } }' "$log" |
    sort -rn | head -n 10 | awk '{ t = $1; $1 = ""; printf "  %8.1f s %s\n", t, $0 }'

# One closing line over every test binary (cargo prints one per binary).
echo "tests: $passed passed, $failed failed"
exit "$status"
