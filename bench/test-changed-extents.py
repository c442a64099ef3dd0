#!/usr/bin/env python3
"""Self-test for changed-extents.py: random sparse image pairs (holes, data
that is all zeros, differing sizes) checked against a naive full comparison."""
import os, random, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def naive(old, new, gran):
    a, b = open(old, "rb").read(), open(new, "rb").read()
    a = a[:len(b)] + bytes(max(0, len(b) - len(a)))
    out = []
    for g in range(0, len(b), gran):
        if a[g:g + gran] != b[g:g + gran]:
            e = min(g + gran, len(b))
            if out and out[-1][1] == g:
                out[-1][1] = e
            else:
                out.append([g, e])
    return [(s, e - s) for s, e in out]


def make(path, size, rng, base=None):
    with open(path, "wb") as f:
        f.truncate(size)
        if base is not None:  # start from a copy of base's data regions
            data = open(base, "rb").read()[:size]
            f.seek(0)
            for off in range(0, len(data), 4096):
                blk = data[off:off + 4096]
                if blk.count(0) != len(blk):
                    f.seek(off)
                    f.write(blk)
        for _ in range(rng.randrange(0, 12)):
            off = rng.randrange(0, size)
            n = min(rng.choice([1, 100, 4096, 65536, 300000]), size - off)
            f.seek(off)
            f.write(rng.choice([bytes(n), rng.randbytes(n), b"\1" * n]))


def main():
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as d:
        old, new = os.path.join(d, "old"), os.path.join(d, "new")
        for i in range(60):
            gran = rng.choice([4096, 65536, 1 << 20])
            make(old, rng.choice([1 << 20, 3 << 20, 5 * 65536 + 123]), rng)
            make(new, rng.choice([1 << 20, 3 << 20, 5 * 65536 + 123]), rng, base=old if i % 3 else None)
            r = subprocess.run([sys.executable, os.path.join(HERE, "changed-extents.py"), old, new,
                                "--granularity", str(gran)], capture_output=True, text=True, check=True)
            got = [tuple(map(int, l.split())) for l in r.stdout.splitlines()]
            want = naive(old, new, gran)
            if got != want:
                print("case %d gran %d: got %s want %s" % (i, gran, got, want))
                return 1
    print("60 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
