"""``scripts/soak [--quick] [--json FILE] [--only SUITE,...]``: run the soak suites, print and save the numbers.

Exit status 0 when every must-be-zero count is zero and every target was met (bytes read, kill
trials), 1 otherwise. ``--quick`` is sized to finish within 10 minutes on a 2-core machine; without it
the run reads 10 GiB and makes 50 kill trials.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from harness import scenarios as suites
from harness.scenarios import GiB, MiB

SUITES = ("hostile", "writes", "network", "bytes", "concurrency", "epoch")


class Size(NamedTuple):
    """How much a soak run does (``SIZES``)."""

    large_rows: int  # rows of the workspace's large dataset (files of 8 MiB + 4321 bytes)
    bytes: int  # to read
    trials: int  # kill trials
    seconds: float  # of the concurrency suite
    cases: int  # hostile cases
    name_rounds: int
    epoch_rows: int

    @property
    def spec(self) -> suites.WorkspaceSpec:
        return suites.WorkspaceSpec(large_rows=self.large_rows, large_bytes=8 * MiB + 4321)


SIZES = {
    # mode: Size(large_rows, bytes, trials, seconds, cases, name_rounds, epoch_rows)
    "quick": Size(140, 1 * GiB, 20, 20.0, 300, 4, 100_000),
    "full": Size(1300, 10 * GiB, 50, 60.0, 1000, 12, 1_000_000),
}
HEADLINE = (
    "bytes_read",
    "wrong_bytes",
    "read_errors",
    "faults_injected",
    "writes",
    "lost_writes",
    "stale_seen",
    "stale_overwrites",
    "kill_trials",
    "max_rss_mb",
    "hangs",
    "op_errors",
    "hostile_cases",
    "hostile_failures",
    "names_loads",
    "names_failed_loads",
    "sibling_sign_failures",
    "network_eio_worst_s",
    "network_recovered_s",
    "max_op_wait_s",
    "epoch_rows",
    "epoch_max_rss_mb",
    "network_failures",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short run (<= 10 minutes)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the figures there")
    parser.add_argument("--only", default=",".join(SUITES), help=f"comma-separated subset of {','.join(SUITES)}")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (emulator data, mount logs)")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(sorted(unknown))}")
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    root = Path(tempfile.mkdtemp(prefix="encordfs-soak-"))
    started = time.monotonic()
    details: dict[str, Any] = {}
    try:
        with suites.Workspace(root, size.spec) as ws:
            for name in SUITES:
                if name not in chosen:
                    continue
                t0 = time.monotonic()
                print(f"soak: {name} ...", file=sys.stderr, flush=True)
                details[name] = _run(name, ws, size)
                print(
                    f"soak: {name} done in {time.monotonic() - t0:.0f} s: {_short(details[name])}",
                    file=sys.stderr,
                    flush=True,
                )
            faults = ws.faults_injected()
    finally:
        if args.keep:
            print(f"soak: work dir kept: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    figures = _headline(details, faults)
    figures["mode"], figures["seconds"] = mode, round(time.monotonic() - started, 1)
    problems = _problems(figures, size, chosen)
    figures["ok"], figures["problems"] = not problems, problems
    out = {**figures, "suites": details}
    width = max(len(k) for k in HEADLINE)
    for key in (*HEADLINE, "mode", "seconds", "ok"):
        if key in figures:
            print(f"{key:<{width}}  {figures[key]}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0 if not problems else 1


def _run(name: str, ws: suites.Workspace, size: Size) -> dict[str, Any]:
    if name == "bytes":
        return suites.bytes_suite(ws, total_bytes=size.bytes)
    if name == "writes":
        return {**suites.writes_suite(ws, trials=size.trials), **suites.stale_suite(ws)}
    if name == "network":
        return {**suites.network_suite(ws), **suites.stall_suite(ws)}
    if name == "hostile":
        return {
            **suites.hostile_suite(ws, cases=size.cases),
            **suites.names_suite(ws, rounds=size.name_rounds),
            **suites.siblings_suite(ws),
        }
    if name == "epoch":
        return suites.epoch_suite(ws.root, rows=size.epoch_rows)
    return suites.concurrency_suite(ws, duration_s=size.seconds)


def _headline(details: dict[str, Any], faults: int) -> dict[str, Any]:
    def total(key: str) -> int:
        return sum(int(d.get(key, 0) or 0) for d in details.values())

    # Counts are summed over the suites; the rest of the headline is taken as below.
    taken = ("faults_injected", "max_rss_mb", "network_eio_worst_s", "network_recovered_s", "max_op_wait_s")
    taken += ("epoch_rows", "epoch_max_rss_mb")
    figures: dict[str, Any] = {key: total(key) for key in HEADLINE if key not in taken}
    figures["faults_injected"] = faults
    figures["max_rss_mb"] = max((d.get("max_rss_mb", 0) for d in details.values()), default=0)
    network = details.get("network", {})
    figures["network_eio_worst_s"] = network.get("network_eio_worst_s")
    figures["network_recovered_s"] = network.get("network_recovered_s")
    figures["max_op_wait_s"] = network.get("max_op_wait_s")
    epoch = details.get("epoch", {})
    figures["epoch_rows"] = epoch.get("epoch_rows")
    figures["epoch_max_rss_mb"] = epoch.get("epoch_max_rss_mb")
    figures["epoch_read_errors"] = epoch.get("epoch_read_errors", 0)
    return figures


def _problems(figures: dict[str, Any], size: Size, chosen: list[str]) -> list[str]:
    problems = [f"{key} = {figures[key]}, must be 0" for key in suites.MUST_BE_ZERO if figures.get(key)]
    if "bytes" in chosen and figures["bytes_read"] < size.bytes:
        problems.append(f"bytes_read {figures['bytes_read']} < target {size.bytes}")
    if "writes" in chosen and figures["kill_trials"] < size.trials:
        problems.append(f"kill_trials {figures['kill_trials']} < target {size.trials}")
    if "bytes" in chosen and not figures["faults_injected"]:
        problems.append("no fault was injected")
    if (figures.get("max_op_wait_s") or 0) > suites.MAX_OP_WAIT_S:
        problems.append(f"max_op_wait_s {figures['max_op_wait_s']} over {suites.MAX_OP_WAIT_S}")
    if (figures.get("epoch_max_rss_mb") or 0) > suites.EPOCH_RSS_LIMIT_MB:
        problems.append(f"epoch_max_rss_mb {figures['epoch_max_rss_mb']} over {suites.EPOCH_RSS_LIMIT_MB}")
    if figures["max_rss_mb"] > suites.RSS_LIMIT_MB:
        problems.append(f"max_rss_mb {figures['max_rss_mb']} over {suites.RSS_LIMIT_MB}")
    return problems


def _short(detail: dict[str, Any]) -> str:
    keys = [k for k in HEADLINE if k in detail] + [
        k for k in ("seconds", "mb_per_s", "failures", "lost", "errors") if detail.get(k)
    ]
    return ", ".join(f"{k}={detail[k]}" for k in keys)


if __name__ == "__main__":
    sys.exit(main())
