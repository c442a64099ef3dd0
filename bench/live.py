#!/usr/bin/env python3
"""Benchmark of live QEMU backup through `cairn server` (issue targets in brackets):

- full backup of a running VM, then an incremental after the guest changed 2 % of its data
  disk: bytes read [<= 3 % of the disk] and wall time [<= 0.1 x the full backup's];
- the guest's freeze time during the online view [<= 1 s];
- instant recovery: from `cairn instant-recovery start` to the guest agent answering, against
  the boot of the same guest from a local disk [<= 1.5 x].

Usage: bash bench/live.sh (builds the release binary and the guest image first).
Everything runs under TCG (no KVM), on a temporary folder; prints a table and ratios.
"""

import base64
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAIRN = os.path.join(ROOT, "target", "release", "cairn")
PASSWORD = "bench-admin-password"
DATA_DISK_GIB = int(os.environ.get("CAIRN_BENCH_DATA_GIB", "4"))
FILLED_GIB = int(os.environ.get("CAIRN_BENCH_FILLED_GIB", "2"))
CHANGE = 0.02
MIB = 1 << 20


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Agent:
    """Minimal QEMU guest agent client (JSON over a Unix socket)."""

    def __init__(self, path, timeout=300):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.settimeout(3)
                self.s.connect(path)
                self.buf = b""
                self.sync()
                self.call("guest-ping")
                self.s.settimeout(120)
                return
            except (OSError, ValueError, socket.timeout) as e:
                last = e
                try:
                    self.s.close()
                except OSError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"guest agent {path}: no answer within {timeout} s ({last})")

    def _read_json(self):
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line, self.buf = self.buf[:nl], self.buf[nl + 1:]
                line = line.strip(b"\xff").strip()
                if line:
                    return json.loads(line)
                continue
            chunk = self.s.recv(65536)
            if not chunk:
                raise ValueError("agent closed the connection")
            self.buf += chunk

    def sync(self):
        n = random.randint(1, 1 << 30)
        self.s.sendall(b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": n}}).encode())
        while True:
            r = self._read_json()
            if r.get("return") == n:
                return

    def call(self, cmd, args=None):
        msg = {"execute": cmd}
        if args is not None:
            msg["arguments"] = args
        self.s.sendall(json.dumps(msg).encode())
        r = self._read_json()
        if "error" in r:
            raise RuntimeError(f"{cmd}: {r['error']}")
        return r.get("return")

    def sh(self, script):
        pid = self.call("guest-exec", {"path": "/bin/sh", "arg": ["-c", script], "capture-output": True})["pid"]
        while True:
            st = self.call("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
                if st.get("exitcode", 0) != 0:
                    err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
                    raise RuntimeError(f"{script!r}: exit {st.get('exitcode')}: {out}{err}")
                return out
            time.sleep(0.05)

    def close(self):
        self.s.close()


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def cairn(env, *args):
    return run(CAIRN, *args, env=env)


def cairn_json(env, *args):
    return json.loads(cairn(env, *args, "--json"))


def guest_args(disks, qmp, qga, serial):
    argv = ["qemu-system-x86_64", "-name", "web01", "-accel", "tcg", "-m", "512", "-smp", "2",
            "-nodefaults", "-display", "none", "-serial", f"file:{serial}"]
    for i, (path, fmt) in enumerate(disks):
        argv += ["-drive", f"file={path},format={fmt},if=none,id=disk{i}",
                 "-device", f"virtio-blk-pci,drive=disk{i},id=vdisk{i}" + (",bootindex=1" if i == 0 else "")]
    argv += ["-chardev", f"socket,path={qga},server=on,wait=off,id=qga0",
             "-device", "virtio-serial-pci,id=vserial0",
             "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0,id=qga-port0",
             "-qmp", f"unix:{qmp},server=on,wait=off"]
    return argv


def session_numbers(env, session):
    s = cairn_json(env, "session", "show", str(session))
    tasks = s["tasks"]
    read = sum(t["statistics"].get("read_bytes", 0) for t in tasks)
    st = s["session"]
    wall = (parse_time(st["ended_at"]) - parse_time(st["started_at"]))
    text = cairn(env, "session", "show", str(session))
    m = re.search(r"frozen for ([0-9.]+) ms", text)
    frozen = float(m.group(1)) / 1000 if m else None
    return read, wall, frozen, st["state"]


def parse_time(t):
    # RFC 3339 with fractional seconds and Z.
    from datetime import datetime
    t = t.replace("Z", "+00:00")
    if "." in t:
        head, rest = t.split(".", 1)
        frac, tz = re.match(r"(\d+)(.*)", rest).groups()
        t = f"{head}.{frac[:6]}{tz}"
    return datetime.fromisoformat(t).timestamp()


def main():
    image = run("bash", os.path.join(ROOT, "scripts", "guest-image.sh")).strip().splitlines()[-1]
    tmp = tempfile.mkdtemp(prefix="cairn-live-bench-", dir=os.environ.get("CAIRN_BENCH_DIR", "/var/tmp"))
    log(f"working in {tmp}")
    vms = os.path.join(tmp, "vms")
    os.makedirs(os.path.join(vms, "web01"))
    sysdisk = os.path.join(vms, "web01", "system.qcow2")
    datadisk = os.path.join(vms, "web01", "data.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image, sysdisk)
    # The data disk: random data in its first FILLED_GIB GiB.
    raw = os.path.join(tmp, "fill.raw")
    run("sh", "-c", f"head -c {FILLED_GIB}G /dev/urandom > {raw} && truncate -s {DATA_DISK_GIB}G {raw}")
    run("qemu-img", "convert", "-O", "qcow2", raw, datadisk)
    os.remove(raw)
    qmp, qga, serial = (os.path.join(vms, f"web01.{e}") for e in ("qmp", "qga", "serial.log"))

    env = dict(os.environ, CAIRN_CONFIG_DIR=os.path.join(tmp, "client"))
    server = subprocess.Popen(
        [CAIRN, "server", "--data", os.path.join(tmp, "data"), "--listen", "127.0.0.1:0",
         "--default-repository", os.path.join(tmp, "repository")],
        env=dict(env, CAIRN_ADMIN_PASSWORD=PASSWORD), stdout=subprocess.PIPE, stderr=open(os.path.join(tmp, "server.log"), "w"),
        text=True)
    url = None
    for line in server.stdout:
        m = re.search(r"listening on (\S+)", line)
        if m:
            url = m.group(1)
            break
    subprocess.run([CAIRN, "login", url, "--user", "admin", "--password-stdin", "--ca-cert",
                    os.path.join(tmp, "data", "ca.pem")], input=PASSWORD + "\n", env=env, check=True,
                   capture_output=True, text=True)
    vm = None
    try:
        t0 = time.time()
        vm = subprocess.Popen(guest_args([(sysdisk, "qcow2"), (datadisk, "qcow2")], qmp, qga, serial),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        agent = Agent(qga)
        first_boot = time.time() - t0
        log(f"first boot to agent: {first_boot:.1f} s")
        agent.close()

        cairn(env, "host", "add", "qemu", "--name", "kvm01", "--qmp", vms)
        cairn(env, "job", "create", "web", "--vm", "web01", "--repository", "default", "--consistency", "online")
        full = cairn_json(env, "job", "run", "web", "--wait")
        f_read, f_wall, f_frozen, f_state = session_numbers(env, full["session"]["id"])
        log(f"full: {f_state}, read {f_read / MIB:.0f} MiB in {f_wall:.2f} s, frozen {f_frozen}")

        # The guest rewrites 2 % of its data disk: 1 MiB writes at random places.
        agent = Agent(qga)
        disk_bytes = DATA_DISK_GIB << 30
        writes = int(disk_bytes * CHANGE) // MIB
        rng = random.Random(7)
        offsets = rng.sample(range(disk_bytes // MIB), writes)
        script = "; ".join(f"dd if=/dev/urandom of=/dev/vdb bs=1M count=1 seek={o} conv=notrunc oflag=direct status=none"
                           for o in offsets)
        agent.sh(script + "; sync")
        agent.close()
        inc = cairn_json(env, "job", "run", "web", "--wait")
        i_read, i_wall, i_frozen, i_state = session_numbers(env, inc["session"]["id"])
        log(f"incremental: {i_state}, read {i_read / MIB:.0f} MiB in {i_wall:.2f} s, frozen {i_frozen}")

        # The same guest booted again from its local disks (the state the restore point holds,
        # already past its first boot): the reference for instant recovery.
        agent = Agent(qga)
        try:
            agent.call("guest-shutdown")
        except (RuntimeError, ValueError, OSError):
            pass
        agent.close()
        vm.wait(timeout=120)
        t0 = time.time()
        vm = subprocess.Popen(guest_args([(sysdisk, "qcow2"), (datadisk, "qcow2")], qmp, qga, serial),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        Agent(qga).close()
        local_boot = time.time() - t0
        log(f"local boot to agent (second boot): {local_boot:.1f} s")

        # Instant recovery of the latest point: start to agent.
        t0 = time.time()
        ir = cairn_json(env, "instant-recovery", "start", "web01", "--name", "web01-ir", "--accel", "tcg")
        ir_agent = Agent(ir["qga"])
        ir_boot = time.time() - t0
        ir_agent.close()
        cairn(env, "instant-recovery", "stop", "web01-ir")
        log(f"instant recovery to agent: {ir_boot:.1f} s (the start call took {ir['start_secs']:.2f} s in the server)")

        total_disk = disk_bytes + int(json.loads(run("qemu-img", "info", "--output=json", "-U", sysdisk))["virtual-size"])
        rows = [
            ("full backup: read", f"{f_read / MIB:.0f} MiB", f"{f_wall:.2f} s"),
            ("incremental after 2 % of the data disk", f"{i_read / MIB:.0f} MiB", f"{i_wall:.2f} s"),
        ]
        print("| measurement | bytes | time |")
        print("| --- | --- | --- |")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]} |")
        print()
        print(f"incremental read / data disk: {i_read / disk_bytes * 100:.2f} % (target <= 3 %); "
              f"/ both disks: {i_read / total_disk * 100:.2f} %")
        print(f"incremental wall / full wall: {i_wall / f_wall:.3f} (target <= 0.1)")
        print(f"guest frozen: full {f_frozen:.3f} s, incremental {i_frozen:.3f} s (target <= 1 s)")
        print(f"instant recovery to agent {ir_boot:.1f} s vs the same guest booted from its local disks "
              f"{local_boot:.1f} s: {ir_boot / local_boot:.2f} x (target <= 1.5); first boot of the image "
              f"{first_boot:.1f} s")
    finally:
        if vm:
            vm.kill()
        server.kill()
        subprocess.run(["pkill", "-f", f"qemu-system-x86_64.*{tmp}"], check=False)
        subprocess.run(["rm", "-rf", tmp], check=False)


if __name__ == "__main__":
    main()
