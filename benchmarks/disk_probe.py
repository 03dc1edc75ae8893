"""What this machine's disk does to the disk cache's writes, measured the way ``core.blockcache`` writes.

``benchmarks/disk_probe.py [DIR]`` (default: a temp dir under the system's temp dir) prints:

- file creates per second in plain subdirectories of DIR and in subdirectories of a directory marked a top
  of directory hierarchies (``spread_subdirs``, ``chattr +T``), 1,000 empty files in each of 4 of each.
  On ext4 without a journal a create scans the inodes freed in the last minutes of its block group, so a
  DIR where many files were just deleted shows the difference ("New files" in ``core.blockcache``);
- MB/s writing 1 GiB in 8 MiB parts through the page cache and with ``O_DIRECT`` (memory never touched
  since boot makes buffered writes slow: "Direct writes" in ``core.blockcache``);
- GB/s of the crc32 the cache computes for every part it writes, over 8 MiB parts not in the CPU's
  caches: zlib's and the one ``core.blockcache`` uses (ISA-L's when ``isal`` is installed).

The figures behind those docstring paragraphs and the crc32 comment come from this script.
"""

from __future__ import annotations

import mmap
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encordfs.core.blockcache import crc32, spread_subdirs  # noqa: E402

FILES, DIRS, PART, PARTS = 1000, 4, 8 << 20, 128


def creates_per_s(directory: Path) -> float:
    directory.mkdir()
    started = time.perf_counter()
    for i in range(FILES):
        os.close(os.open(directory / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return FILES / (time.perf_counter() - started)


def write_mb_s(path: Path, direct: bool) -> float:
    buf = mmap.mmap(-1, PART)  # page-aligned, as O_DIRECT wants
    buf[:] = os.urandom(PART)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_DIRECT if direct else 0), 0o600)
    try:
        started = time.perf_counter()
        for i in range(PARTS):
            os.pwrite(fd, buf, i * PART)
        return PARTS * PART / (time.perf_counter() - started) / 1e6
    finally:
        os.close(fd)
        buf.close()


def crc_gb_s(crc: Callable[[bytes], int]) -> float:
    parts = [os.urandom(PART) for _ in range(16)]  # 128 MiB: each part is out of the caches when summed
    started = time.perf_counter()
    for _ in range(4):
        for part in parts:
            crc(part)
    return 4 * len(parts) * PART / (time.perf_counter() - started) / 1e9


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="disk-probe-", dir=sys.argv[1] if len(sys.argv) > 1 else None))
    try:
        plain = [creates_per_s(base / f"plain{i}") for i in range(DIRS)]
        (base / "spread").mkdir()
        spread_subdirs(str(base / "spread"))
        spread = [creates_per_s(base / "spread" / f"d{i}") for i in range(DIRS)]
        print(f"creates, plain subdirs:  {'  '.join(f'{r:8,.0f}' for r in plain)} files/s")
        print(f"creates, spread subdirs: {'  '.join(f'{r:8,.0f}' for r in spread)} files/s")
        for direct in (False, True):
            rate = write_mb_s(base / f"big-{direct}", direct)
            print(f"1 GiB in 8 MiB parts, {'O_DIRECT' if direct else 'buffered'}: {rate:,.0f} MB/s")
        print(f"crc32 of 8 MiB parts: zlib {crc_gb_s(zlib.crc32):.1f} GB/s, "
              f"the cache's ({crc32.__module__}) {crc_gb_s(crc32):.1f} GB/s")  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
