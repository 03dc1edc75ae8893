"""Where a small-file read spends its time: wall time and mount-process CPU per FUSE operation.

``benchmarks/op_costs.py [ROWS]`` (default 5,000) generates ROWS × 100 KiB rows in the emulator,
reads them once through a mount (filling the disk block cache), remounts on the same cache dir and
then, one operation kind at a time and single-threaded: ``stat`` of each file (a LOOKUP each),
``stat`` again (kernel cache), ``open``+``close``, ``open``+``read``+``close`` (a READ served from
the disk block cache) and the same again (kernel page cache, ``keep_cache``). Prints microseconds
per file: wall, and the mount process's user+system CPU from ``/proc/PID/stat``. Pass mount options
after ROWS (e.g. ``--binding kernel``, ``--binding mfusepy``) to compare the bindings.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.emulator import RunningEmulator  # noqa: E402
from harness.mount import MountedFS  # noqa: E402


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    extra = sys.argv[2:]
    work = Path(tempfile.mkdtemp(prefix="op-costs-"))
    try:
        with RunningEmulator(["--generate", f"ops:{rows}:102400"]) as emu:
            assert emu.key_file is not None
            with MountedFS(emu.domain, emu.key_file, work, *extra) as m:
                names = sorted(os.listdir(m.path / "ops"))
                for name in names:
                    (m.path / "ops" / name).read_bytes()
            with MountedFS(emu.domain, emu.key_file, work, *extra) as m:
                assert m.proc is not None
                pid = m.proc.pid
                paths = [str(m.path / "ops" / n) for n in names]
                os.stat(paths[0])  # loads the folder

                def step(label: str, op: Callable[[str], object]) -> None:
                    c0, t0 = cpu_s(pid), time.perf_counter()
                    for p in paths:
                        op(p)
                    wall, cpu = time.perf_counter() - t0, cpu_s(pid) - c0
                    print(
                        f"{label:<22} wall {wall / rows * 1e6:7.0f} us   mount cpu {cpu / rows * 1e6:7.0f} us",
                        flush=True,
                    )

                def open_close(p: str) -> None:
                    os.close(os.open(p, os.O_RDONLY))

                def open_read_close(p: str) -> None:
                    fd = os.open(p, os.O_RDONLY)
                    try:
                        os.read(fd, 1 << 20)
                    finally:
                        os.close(fd)

                step("lookup (stat)", os.stat)
                step("stat, kernel cache", os.stat)
                step("open+close", open_close)
                step("open+read, disk cache", open_read_close)
                step("open+read, page cache", open_read_close)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
