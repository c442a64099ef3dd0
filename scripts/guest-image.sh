#!/usr/bin/env bash
# Builds (once) and caches the small Debian bookworm guest that cairn's end-to-end tests boot under QEMU.
#
#   scripts/guest-image.sh [OUT]     # prints the image path on stdout; everything else goes to stderr
#
# OUT defaults to ${CAIRN_GUEST_CACHE:-$HOME/.cache/cairn/guest}/debian-guest.qcow2. The image is rebuilt only
# when it is missing or when this script's content changed (its sha256 is stored in OUT.sha256). Needs root
# (debootstrap, loop devices, mount); missing tools are installed from deb.debian.org with apt-get.
# The downloaded .deb files are kept in $CACHE/debs so a rebuild does not download again.
#
# The guest: 1 GiB virtual qcow2 v3 (compressed clusters), MBR with one bootable ext4 partition
# (PARTUUID ca12e001-01) booted by syslinux's mbr.bin + extlinux from SeaBIOS; Debian minbase + systemd +
# udev + dbus + linux-image-cloud-amd64 (small initramfs: virtio-blk only, no udev) + qemu-guest-agent
# (virtio-serial port org.qemu.guest_agent.0, started early) + e2fsprogs. Serial console on ttyS0, no
# network, no getty, volatile journal, no timers, no docs/man pages/locales/apt lists.
# See docs/guest-image.md.
set -euo pipefail

SUITE=bookworm
MIRROR=http://deb.debian.org/debian
DISK_SIZE=$((1024 * 1024 * 1024))
PART_START_SECTOR=2048
DISK_ID=0xca12e001
PARTUUID=ca12e001-01
# Kernel warnings, the initramfs' steps and systemd's failures reach the serial console (for boot
# diagnostics; measured as free); crypto self-tests and IPv6 set-up are skipped (~1 s under TCG).
KERNEL_ARGS="root=PARTUUID=$PARTUUID rootfstype=ext4 rw console=ttyS0,115200 loglevel=4 mitigations=off \
nowatchdog audit=0 tsc=reliable cryptomgr.notests ipv6.disable=1 fsck.mode=skip \
systemd.show_status=error systemd.getty_auto=0"
# Packages beyond minbase (dbus: qemu-ga's guest-shutdown runs `shutdown +0`, which asks logind over
# D-Bus). The kernel comes later, once the initramfs is configured, so its initramfs is built only once.
INCLUDE=systemd,systemd-sysv,udev,dbus,qemu-guest-agent,e2fsprogs,coreutils,kmod,initramfs-tools,zstd

log() { printf 'guest-image: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

script_path=$(readlink -f "${BASH_SOURCE[0]}")
script_hash=$(sha256sum "$script_path" | cut -d' ' -f1)
cache_dir=${CAIRN_GUEST_CACHE:-$HOME/.cache/cairn/guest}
out=${1:-$cache_dir/debian-guest.qcow2}
case $out in /*) ;; *) out=$PWD/$out ;; esac
out_dir=$(dirname "$out")
hash_file=$out.sha256

up_to_date() { [[ -s $out && -f $hash_file && $(<"$hash_file") == "$script_hash" ]]; }

if up_to_date; then
    echo "$out"
    exit 0
fi

[[ $(id -u) == 0 ]] || die "building $out needs root (debootstrap, loop devices, mount); run as root once, \
or set CAIRN_GUEST_CACHE to a folder holding a built image"

mkdir -p "$out_dir" "$cache_dir/debs"
# One builder at a time (parallel test binaries may all ask for the image).
exec 9>"$out.lock"
flock 9
if up_to_date; then
    echo "$out"
    exit 0
fi

# Tools: command → Debian package. Missing ones are installed; a failed install names the package.
declare -A tools=(
    [debootstrap]=debootstrap [mkfs.ext4]=e2fsprogs [e2fsck]=e2fsprogs [losetup]=mount [sfdisk]=fdisk
    [extlinux]=extlinux [qemu-img]=qemu-utils [fstrim]=util-linux [flock]=util-linux [chroot]=coreutils
)
mbr_bin=/usr/lib/syslinux/mbr/mbr.bin
missing=()
for tool in "${!tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${tools[$tool]}")
done
[[ -f $mbr_bin ]] || missing+=(syslinux-common)
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing missing packages: ${missing[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >&2; then
        die "could not install the Debian packages ${missing[*]} (apt-get install -y ${missing[*]})"
    fi
fi

started=$(date +%s)
work=$(mktemp -d "$out_dir/.build.XXXXXX")
root=$work/root
raw=$work/disk.raw
loop=
mounts=()

cleanup() {
    local status=$?
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount -l "${mounts[i]}" 2>/dev/null || true
    done
    if [[ -n $loop ]]; then
        losetup -d "$loop" 2>/dev/null || true
    fi
    # Never delete through a mount that is still there (the chroot had the host's /dev bound).
    if grep -qF " $work/" /proc/self/mountinfo; then
        log "warning: mounts under $work remain; left it in place"
    else
        rm -rf --one-file-system "$work"
    fi
    rm -f "$out.tmp"
    if ((status != 0)); then
        log "build failed (exit $status); temporary files removed"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

mount_at() { # mount_at TARGET ARGS... (remembered for the trap)
    local target=$1
    shift
    mkdir -p "$target"
    mount "$@" "$target"
    mounts+=("$target")
}
unmount_all() {
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount "${mounts[i]}"
    done
    mounts=()
}

log "building $out (script $script_hash)"

# Disk: sparse raw file, MBR with one bootable Linux partition from 1 MiB to the end.
truncate -s "$DISK_SIZE" "$raw"
printf 'label: dos\nlabel-id: %s\nstart=%s, type=83, bootable\n' "$DISK_ID" "$PART_START_SECTOR" |
    sfdisk --quiet "$raw"
dd if="$mbr_bin" of="$raw" bs=440 count=1 conv=notrunc status=none
part_offset=$((PART_START_SECTOR * 512))
loop=$(losetup --find --show --offset "$part_offset" --sizelimit $((DISK_SIZE - part_offset)) "$raw")
# No 64bit (extlinux), no reserved blocks, inode tables and journal initialised now (no lazy init writes
# in the guest), no periodic checks.
mkfs.ext4 -q -F -L cairn-root -O ^64bit -m 0 -E lazy_itable_init=0,lazy_journal_init=0 "$loop"
tune2fs -c 0 -i 0 "$loop" >/dev/null
mount_at "$root" "$loop"

log "debootstrap $SUITE (minbase + $INCLUDE)"
debootstrap --variant=minbase --include="$INCLUDE" --cache-dir="$cache_dir/debs" \
    "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    die "debootstrap failed: $(tail -n 20 "$work/debootstrap.log")"

# Configuration (before the kernel, so its one initramfs build uses it).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
cat >"$root/etc/dpkg/dpkg.cfg.d/01-cairn-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
cat >"$root/etc/apt/apt.conf.d/01-cairn" <<'EOF'
APT::Install-Recommends "false";
Acquire::Languages "none";
EOF
cat >"$root/etc/initramfs-tools/conf.d/cairn.conf" <<'EOF'
MODULES=list
BUSYBOX=n
COMPRESS=zstd
COMPRESSLEVEL=19
FSTYPE=ext4
RESUME=none
EOF
printf '%s\n' virtio_pci virtio_blk >>"$root/etc/initramfs-tools/modules"
# No udev in the initramfs: its coldplug + settle costs seconds under TCG. The listed modules are loaded
# explicitly, devtmpfs makes the device nodes and blkid resolves root=PARTUUID=.
cat >"$root/etc/initramfs-tools/hooks/zz-cairn-no-udev" <<'EOF'
#!/bin/sh
case "$1" in prereqs) exit 0 ;; esac
for path in scripts/init-top/udev scripts/init-bottom/udev bin/udevadm usr/bin/udevadm lib/systemd/systemd-udevd \
    usr/lib/systemd/systemd-udevd lib/udev/rules.d usr/lib/udev/rules.d etc/udev; do
    rm -rf "${DESTDIR:?}/$path"
done
EOF
chmod 755 "$root/etc/initramfs-tools/hooks/zz-cairn-no-udev"
# Drivers udev would load for the i440fx board but nothing here uses (legacy IDE probing costs time).
printf 'blacklist %s\n' ata_piix ata_generic pata_acpi libata serio_raw pcspkr floppy qemu_fw_cfg \
    >"$root/etc/modprobe.d/cairn-blacklist.conf"
echo "cairn-guest" >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 cairn-guest\n' >"$root/etc/hosts"
printf 'PARTUUID=%s / ext4 rw,errors=remount-ro 0 0\n' "$PARTUUID" >"$root/etc/fstab"
echo 'LANG=C.UTF-8' >"$root/etc/default/locale"
# A fixed machine id: an empty one would make every boot a "first boot" (preset-all, firstboot prompts).
tr -d - </proc/sys/kernel/random/uuid >"$root/etc/machine-id"
mkdir -p "$root/etc/systemd/journald.conf.d" "$root/etc/systemd/system.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=8M\n' >"$root/etc/systemd/journald.conf.d/cairn.conf"
printf '[Manager]\nDefaultTimeoutStartSec=20s\nDefaultTimeoutStopSec=10s\n' \
    >"$root/etc/systemd/system.conf.d/cairn.conf"

mount_at "$root/proc" -t proc proc
mount_at "$root/sys" -t sysfs sysfs
mount_at "$root/dev" --bind /dev
mount_at "$root/var/cache/apt/archives" --bind "$cache_dir/debs"

log "installing linux-image-cloud-amd64"
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-image-cloud-amd64 \
    >"$work/kernel.log" 2>&1 || die "installing the kernel failed: $(tail -n 20 "$work/kernel.log")"
kernel=$(cd "$root/boot" && ls vmlinuz-*)
initrd=$(cd "$root/boot" && ls initrd.img-*)
kver=${kernel#vmlinuz-}

# Units and generators a test guest does not need (each costs boot time under TCG). The random seed service
# would wait for the kernel's entropy pool (seconds under TCG) and hold back every ordinary unit.
for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer \
    e2scrub_reap.service systemd-pstore.service systemd-firstboot.service getty@.service serial-getty@.service \
    getty.target remote-fs.target systemd-random-seed.service systemd-update-utmp.service \
    systemd-update-utmp-runlevel.service systemd-journal-flush.service systemd-sysusers.service \
    kmod-static-nodes.service modprobe@configfs.service modprobe@dm_mod.service modprobe@fuse.service \
    modprobe@loop.service modprobe@drm.service modprobe@efi_pstore.service dev-hugepages.mount dev-mqueue.mount \
    sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount sys-fs-fuse-connections.mount \
    proc-sys-fs-binfmt_misc.automount systemd-binfmt.service; do
    rm -f "$root"/etc/systemd/system/*.wants/"$unit"
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# The guest agent, started as early as possible: Debian's unit waits for udev's coldplug to announce the
# port device (after sysinit.target, seconds later under TCG). This one starts beside journald and finds the
# port by name in sysfs (the device node comes from devtmpfs, no udev needed). Debian's unit is masked.
cat >"$root/usr/local/sbin/cairn-qemu-ga" <<'EOF'
#!/bin/sh
# Starts qemu-ga on the virtio-serial port named org.qemu.guest_agent.0 (waits up to 30 s for it).
modprobe -q virtio_console
i=0
while [ $i -lt 300 ]; do
    for port in /sys/class/virtio-ports/*; do
        if [ -e "$port/name" ] && [ "$(cat "$port/name")" = org.qemu.guest_agent.0 ] && [ -c "/dev/${port##*/}" ]; then
            echo "cairn-guest: starting qemu-ga on /dev/${port##*/}" >/dev/console 2>/dev/null || true
            exec /usr/sbin/qemu-ga --method=virtio-serial --path="/dev/${port##*/}"
        fi
    done
    i=$((i + 1))
    sleep 0.1
done
echo "no virtio-serial port named org.qemu.guest_agent.0" >&2
exit 1
EOF
chmod 755 "$root/usr/local/sbin/cairn-qemu-ga"
cat >"$root/etc/systemd/system/cairn-qemu-ga.service" <<'EOF'
[Unit]
Description=QEMU guest agent (started early)
DefaultDependencies=no
Conflicts=shutdown.target
Before=shutdown.target sysinit.target
StartLimitIntervalSec=0

[Service]
ExecStart=/usr/local/sbin/cairn-qemu-ga
Restart=always
RestartSec=1

[Install]
WantedBy=sysinit.target
EOF
ln -sf /etc/systemd/system/cairn-qemu-ga.service "$root/etc/systemd/system/sysinit.target.wants/cairn-qemu-ga.service"
ln -sf /dev/null "$root/etc/systemd/system/qemu-guest-agent.service"

mkdir -p "$root/etc/systemd/system-generators"
for generator in cryptsetup getty gpt-auto hibernate-resume integritysetup rc-local run system-update sysv \
    veritysetup; do
    ln -sf /dev/null "$root/etc/systemd/system-generators/systemd-$generator-generator"
done

# Kernel modules nobody loads here (network, exotic storage and filesystems): smaller image.
moddir=$root/usr/lib/modules/$kver/kernel
rm -rf "$moddir/net" "$moddir/sound" "$moddir/arch/x86/kvm" \
    "$moddir"/drivers/{net,infiniband,comedi,target,md,hid,nvdimm,gpu,media,isdn,staging,hv,xen,ptp,pps,vhost}
find "$moddir/fs" -mindepth 1 -maxdepth 1 -type d \
    ! -name jbd2 ! -name fat ! -name vfat ! -name nls ! -name isofs ! -name fuse ! -name overlayfs \
    ! -name squashfs ! -name ext4 ! -name mbcache ! -name autofs -exec rm -rf {} +
chroot "$root" depmod -a "$kver"

# Boot loader: extlinux in /boot/extlinux, the MBR code was written above.
mkdir -p "$root/boot/extlinux"
cat >"$root/boot/extlinux/extlinux.conf" <<EOF
DEFAULT cairn
PROMPT 0
TIMEOUT 0
LABEL cairn
  LINUX /boot/$kernel
  INITRD /boot/$initrd
  APPEND $KERNEL_ARGS
EOF
extlinux --install "$root/boot/extlinux" >/dev/null 2>&1 || die "extlinux --install failed"

# Slim down: package caches and lists, docs, man pages, locales, logs.
rm -f "$root/usr/sbin/policy-rc.d"
unmount_all
mount_at "$root" "$loop"
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/{doc,man,info,lintian}/* \
    "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old "$root"/tmp/* "$root"/var/tmp/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
find "$root/var/log" -type f -delete
sync -f "$root" # fstrim only sees blocks whose freeing is committed
fstrim "$root" >/dev/null 2>&1 || log "fstrim failed (free blocks stay allocated in the raw file)"
unmount_all
e2fsck -fn "$loop" >"$work/fsck.log" 2>&1 || die "the new filesystem is not clean: $(cat "$work/fsck.log")"
losetup -d "$loop"
loop=

log "converting to qcow2"
qemu-img convert -q -f raw -O qcow2 -c -o compat=1.1,cluster_size=65536,compression_type=zstd "$raw" "$out.tmp" ||
    qemu-img convert -q -f raw -O qcow2 -c -o compat=1.1,cluster_size=65536 "$raw" "$out.tmp"
mv -f "$out.tmp" "$out"
echo "$script_hash" >"$hash_file"
log "built $out in $(($(date +%s) - started)) s ($(du -k "$out" | cut -f1) KiB allocated)"
echo "$out"
