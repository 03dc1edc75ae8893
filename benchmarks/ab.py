"""Two source trees of encordfs, the same cache figures, interleaved in one sitting: is B slower than A?

``python -m benchmarks.ab A_TREE B_TREE [--reps 3] [--small 10000] [--json FILE]`` (as root; nginx needed).
One data set, one nginx and one emulator serve every mount; each repetition mounts tree A then tree B
(B then A on odd repetitions) by pointing ``PYTHONPATH`` at the tree, so the machine's drift (other
jobs on a shared VM) falls on both. ``PYTHONSAFEPATH`` is set too: a mount runs ``python -m encordfs``,
which puts the current directory first on ``sys.path``, so run from a checkout (as ``-m benchmarks.ab``
must be) every mount imported that checkout whatever ``PYTHONPATH`` said; before this, both sides of an
A/B run from the repository were the same code. Each tree is checked to be the one imported.

Per tree and repetition:

- ``p1_MBps``: the big file (1 GiB) read cold through a fresh mount (P1's numerator; the direct GET it is
  divided by is the same for both trees and measured once per repetition: ``direct_MBps``);
- ``p1_warm_MBps``: the big file again from that disk cache on a remount, page cache dropped (after fill
  passes until one fetches nothing, as bench.py's P1_warm);
- ``p2_files_s`` / ``p3_files_s``: the small files cold through a fresh mount, 8 threads, then again from
  its disk cache on a remount with the page cache dropped; ``p3`` divides the latter by a read of the
  local source files, page cache dropped, in the same repetition.

Each read also records the CPU seconds the mount process spent on it (``*_cpu_s``): on a shared VM the
wall-clock rates swing with other jobs, CPU per byte much less.

Medians are printed per tree; the JSON holds every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import bench, infra
from benchmarks.infra import cpu_s, mounted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs=2, type=Path, help="two encordfs source trees (A, B)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--small", type=int, default=bench.FULL.small_count, help="number of 100 KiB files")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    trees = {f"{tag}:{tree.name}": tree.resolve() for tag, tree in zip("AB", args.trees)}
    sizes = replace(bench.FULL, small_count=args.small)
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    with infra.Cleanup() as stack:
        b = bench.Bench(stack, sizes, quick=False, profile=False)
        src = b.work / "src"
        big_src, small_src = bench.make_source(src, sizes)
        data_dir = b.work / "emu"
        nginx_url = infra.start_nginx(stack, data_dir / "blobs", b.work / "nginx")
        emu = infra.start_emulator(
            stack, data_dir, ["--import", str(src), "--blob-base-url", nginx_url], b.work / "emulator.log"
        )
        big_url, _, _ = b.presign(emu)
        bench.warm_page_cache([big_src, *small_src])
        for rep in range(args.reps):
            secs, n = bench.stream_get(big_url)
            direct = n / secs / 1e6
            order = list(trees) if rep % 2 == 0 else list(reversed(trees))
            for name in order:
                use_tree(trees[name])
                bench.log(f"repetition {rep + 1}/{args.reps}: {name}")
                got = one_tree(b, emu, big_src, small_src, f"{rep}-{name.split(':')[0]}")
                got["direct_MBps"] = direct
                got["p1"] = got["p1_MBps"] / direct
                for key, value in got.items():
                    samples[name].setdefault(key, []).append(value)
    print(f"\n{'figure':<16}" + "".join(f"{name:>24}" for name in trees))
    for key in sorted(next(iter(samples.values()))):
        print(f"{key:<16}" + "".join(f"{statistics.median(samples[name][key]):>24.3f}" for name in trees))
    if args.json:
        args.json.write_text(json.dumps({"trees": {k: str(v) for k, v in trees.items()}, "samples": samples}, indent=2))
    return 0


def use_tree(tree: Path) -> None:
    """Make the mount processes started from now on import encordfs from ``tree`` (checked: a mount is
    ``sys.executable -m encordfs`` with this environment and working directory)."""
    os.environ["PYTHONPATH"] = str(tree)
    os.environ["PYTHONSAFEPATH"] = "1"  # no current directory first on sys.path (python -m)
    found = subprocess.run(
        [sys.executable, "-c", "import encordfs; print(encordfs.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(tree):
        raise SystemExit(f"ab: a mount would import encordfs from {found}, not from {tree}")


def one_tree(b: bench.Bench, emu: infra.Emulator, big_src: Path, small_src: list[Path], tag: str) -> dict[str, float]:
    out: dict[str, float] = {}
    big_cache = b.work / f"big-{tag}"
    secs, n, out["p1_cpu_s"] = read_big(b, emu, big_src, big_cache, drop=False)
    out["p1_MBps"] = n / secs / 1e6
    for _ in range(4):  # fill what the cold pass's disk backlog skipped
        if not read_big(b, emu, big_src, big_cache, drop=False, fetched_only=True)[1]:
            break
    secs, n, out["p1_warm_cpu_s"] = read_big(b, emu, big_src, big_cache, drop=True)
    out["p1_warm_MBps"] = n / secs / 1e6

    small_cache = b.work / f"small-{tag}"
    count = len(small_src)
    for phase in ("p2", "p3"):
        with mounted(lambda: b.mount(emu, small_cache)) as m:
            paths = [m.path / "small" / p.name for p in small_src]
            os.listdir(m.path / "small")
            if phase == "p3":
                b.drop()
            cpu0 = cpu_s(m.pid)
            secs, total = bench.read_parallel(paths)
            out[f"{phase}_cpu_s"] = cpu_s(m.pid) - cpu0
        assert total == count * b.sizes.small_bytes
        out[f"{phase}_files_s"] = count / secs
    b.drop()
    secs, _ = bench.read_parallel(small_src)
    out["local_files_s"] = count / secs
    out["p3"] = out["p3_files_s"] / out["local_files_s"]
    bench.warm_page_cache(small_src)
    return out


def read_big(
    b: bench.Bench, emu: infra.Emulator, big_src: Path, cache: Path, drop: bool, fetched_only: bool = False
) -> tuple[float, int, float]:
    """(seconds, bytes, mount CPU seconds) of one read of the big file on a new mount of ``cache``; with
    ``fetched_only`` the bytes are those fetched from the server."""
    with mounted(lambda: b.mount(emu, cache)) as m:
        path = m.path / "big" / big_src.name
        os.listdir(path.parent)
        if drop:
            b.drop()
        cpu0 = cpu_s(m.pid)
        secs, n = bench.read_parallel([path], threads=1)
        cpu = cpu_s(m.pid) - cpu0
        status: dict[str, Any] = json.loads((m.path / ".encordfs" / "status.json").read_text())
    assert n == big_src.stat().st_size
    if fetched_only:
        return secs, int(status.get("counters", {}).get("fetch.bytes_fetched", 0)), cpu
    return secs, n, cpu


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("benchmarks/ab: needs root (drop_caches, nginx, FUSE mounts)", file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
