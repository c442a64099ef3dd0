#!/usr/bin/env python3
"""Print the extents that differ between two raw disk images.

    changed-extents.py OLD NEW [--granularity 65536]

Simulates a hypervisor's changed-block tracking (CBT): output lines are
"OFFSET LENGTH" in decimal bytes, aligned to the granularity, sorted, with
adjacent extents merged.  Ranges that are holes in both files are skipped
without reading (SEEK_DATA/SEEK_HOLE); everything else is read in large
chunks and compared granule by granule.  Offsets beyond OLD's end are
compared against zeros; the output covers NEW's size only.
"""
import argparse
import os
import sys

CHUNK = 4 << 20  # read size; a multiple of the granularity


def data_segments(fd, size):
    """Yield (start, end) of the data (non-hole) regions of an open file."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no more data after pos
            return
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def union(segs, gran, limit):
    """Align segments outward to the granularity, clip and merge them."""
    out = []
    for s, e in sorted((s // gran * gran, min(-(-e // gran) * gran, limit)) for s, e in segs):
        if s >= e:
            continue
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def read_full(fd, off, n):
    """pread exactly n bytes, zero-padding past end of file."""
    parts = []
    got = 0
    while got < n:
        b = os.pread(fd, n - got, off + got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    buf = b"".join(parts)
    return buf + bytes(n - len(buf)) if len(buf) < n else buf


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--granularity", type=int, default=65536)
    a = ap.parse_args()
    gran = a.granularity
    if gran <= 0 or CHUNK % gran and gran % CHUNK:
        sys.exit("granularity must divide or be a multiple of %d" % CHUNK)
    step = max(CHUNK, gran)

    fo = os.open(a.old, os.O_RDONLY)
    fn = os.open(a.new, os.O_RDONLY)
    size_new = os.fstat(fn).st_size
    size_old = os.fstat(fo).st_size
    for fd in (fo, fn):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass

    # Regions holding data in either file (clipped to NEW's size); the rest is
    # zeros in both and therefore unchanged.
    segs = list(data_segments(fo, min(size_old, size_new))) + list(data_segments(fn, size_new))
    regions = union(segs, gran, size_new)

    changed = []  # merged [start, end) extents

    def mark(s, e):
        if changed and changed[-1][1] == s:
            changed[-1][1] = e
        else:
            changed.append([s, e])

    for rs, re_ in regions:
        off = rs
        while off < re_:
            n = min(step, re_ - off)
            bo = read_full(fo, off, n) if off < size_old else bytes(n)
            bn = read_full(fn, off, n)
            if bo != bn:  # fast path: whole chunk equal is one memcmp
                mo, mn = memoryview(bo), memoryview(bn)
                for g in range(0, n, gran):
                    if mo[g:g + gran] != mn[g:g + gran]:
                        mark(off + g, min(off + g + gran, size_new))
            off += n

    out = sys.stdout
    for s, e in changed:
        out.write("%d %d\n" % (s, e - s))
    total = sum(e - s for s, e in changed)
    print("changed-extents: %d extents, %d bytes (%.2f%% of %d)"
          % (len(changed), total, 100.0 * total / max(size_new, 1), size_new), file=sys.stderr)


if __name__ == "__main__":
    main()
