"""What P3's pattern reaches on this machine when no Python serves the FUSE requests.

``python -m benchmarks.native_ceiling [--files N] [--threads T] [--rounds R] [--open-us LIST] [--json FILE]``
(root, a C compiler, ``/dev/fuse``). It compiles ``benchmarks/native_ceiling.c``, a minimal read-only
FUSE server in C that answers LOOKUP, OPEN (kernel passthrough on the file itself, one backing id per
inode, closed when the kernel forgets it, as encordfs does), RELEASE and FORGET, writes N × 100 KiB
files, and then, as ``benchmarks/run``'s P3 does, reads them all with 8 threads through the mount and
from the directory itself, page cache (and dentries) dropped before each, alternating, ``R`` rounds.

``--open-us 0,50,100`` repeats it with each OPEN first spinning that many microseconds under one
process-wide mutex (a Python open behind its GIL, everything else native). The figures say what a
native request loop would buy (P3 is the median of the rounds' ratios, as in ``benchmarks/run``):

    ceiling_P3_open0us     native server ÷ local disk (the ceiling of the design)
    ceiling_P3_open50us    ... with a 50 µs serialized open, and so on for each --open-us value
    ceiling_cpu_us_open0us the server's CPU per file (all its threads), and so on
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks import infra
from benchmarks.bench import read_parallel
from encordfs.control import mounted_at

HERE = Path(__file__).resolve().parent
FILE_BYTES = 100 * 1024


def build(work: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("native_ceiling: needs a C compiler (apt-get install gcc)")
    binary = work / "native_ceiling"
    subprocess.run([cc, "-O2", "-pthread", "-o", str(binary), str(HERE / "native_ceiling.c")], check=True)
    return binary


def make_files(data: Path, count: int) -> list[Path]:
    data.mkdir()
    paths = [data / f"img_{i:06d}.jpg" for i in range(count)]
    for path in paths:
        path.write_bytes(os.urandom(FILE_BYTES))
    os.sync()
    return paths


def run_config(
    binary: Path, data: Path, mnt: Path, paths: list[Path], threads: int, rounds: int, open_us: int
) -> dict[str, float]:
    env = dict(os.environ, OPEN_US=str(open_us))
    server = subprocess.Popen([str(binary), str(data), str(mnt), str(threads)], env=env)
    try:
        infra.wait_for(lambda: server.poll() is not None or mounted_at(mnt) is not None, 10, "the server's mount")
        if server.poll() is not None:
            raise SystemExit(f"native_ceiling: the server did not mount (exit {server.returncode})")
        through = [mnt / p.name for p in paths]
        ratios, cpus, mount_rates, local_rates = [], [], [], []
        for _ in range(rounds):
            infra.drop_caches()
            cpu0 = infra.cpu_s(server.pid)
            secs, total = read_parallel(through)
            cpus.append((infra.cpu_s(server.pid) - cpu0) * 1e6 / len(paths))
            assert total == len(paths) * FILE_BYTES, total
            mount_rates.append(len(paths) / secs)
            infra.drop_caches()
            secs, total = read_parallel(paths)
            local_rates.append(len(paths) / secs)
            ratios.append(mount_rates[-1] / local_rates[-1])
            print(
                f"  open {open_us:>3} us: native {mount_rates[-1]:7,.0f} files/s, local {local_rates[-1]:7,.0f}, "
                f"ratio {ratios[-1]:.3f}, server CPU {cpus[-1]:.0f} us/file",
                flush=True,
            )
        return {
            f"ceiling_P3_open{open_us}us": statistics.median(ratios),
            f"ceiling_cpu_us_open{open_us}us": statistics.median(cpus),
            f"ceiling_files_s_open{open_us}us": statistics.median(mount_rates),
            f"ceiling_local_files_s_open{open_us}us": statistics.median(local_rates),
        }
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # (the server ends with its mount)
        infra.stop_process(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.native_ceiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=4, help="server worker threads (cloned fds)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--open-us", default="0,50,100", help="serialized microseconds per OPEN, one config each")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("native_ceiling: needs root (mount, drop_caches)", file=sys.stderr)
        return 2
    figures: dict[str, float] = {}
    with infra.Cleanup() as stack:  # its temp dir is removed without descending into a mount left behind
        work = stack.temp_dir("native-ceiling-")
        binary = build(work)
        print(f"writing {args.files:,} files of 100 KiB", flush=True)
        paths = make_files(work / "data", args.files)
        mnt = work / "mnt"
        mnt.mkdir()
        for open_us in (int(v) for v in args.open_us.split(",") if v.strip()):
            figures.update(run_config(binary, work / "data", mnt, paths, args.threads, args.rounds, open_us))
    print(f"{'figure':<36} value")
    for name, value in figures.items():
        print(f"{name:<36} {value:,.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
