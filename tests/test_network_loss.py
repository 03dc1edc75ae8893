"""Network loss: the emulator goes away under a mount and comes back on the same port and data dir.

Reads of bytes not cached fail with EIO within the retry budget (never a hang), listings, ``stat`` and
xattrs keep working from the catalog, and the same mount reads again by itself once the emulator is
back (the short form of ``scripts/soak``'s network suite; see ``harness.scenarios.network_suite``).
"""

from __future__ import annotations

from pathlib import Path

from harness import scenarios as suites


def test_emulator_down_then_back(tmp_path: Path) -> None:
    spec = suites.WorkspaceSpec(large_rows=3, large_bytes=24 * suites.MiB + 5, small_rows=3, real_files=2)
    with suites.Workspace(tmp_path, spec) as ws:
        figures = suites.network_suite(ws, budget_s=45.0, recover_within_s=30.0)
    assert figures["network_failures"] == 0, figures["failures"]
    assert figures["network_ls_ok"] and figures["hangs"] == 0
    assert set(figures["network_eio"]) == {"warm", "cold"}
    assert figures["network_eio_worst_s"] <= 45.0  # the 30 s budget; the kernel may retry a failed page once
    assert figures["network_recovered_s"] is not None and figures["network_recovered_s"] < 30.0


def test_a_stalled_service_never_holds_an_operation_past_35_s(tmp_path: Path) -> None:
    with suites.Workspace(
        tmp_path, suites.WorkspaceSpec(large_rows=2, large_bytes=1000, small_rows=3, real_files=4)
    ) as ws:
        figures = suites.stall_suite(ws)
    assert figures["hangs"] == 0 and figures["max_op_wait_s"] <= suites.MAX_OP_WAIT_S, figures
    assert all(not k.endswith(": ok") for k in figures["stall_outcomes"]), figures  # each one failed: EIO


def test_an_epoch_keeps_the_mounts_memory_bounded(tmp_path: Path) -> None:
    """The soak's epoch over 1M rows, small: every file read once, no read error, RSS under the limit."""
    figures = suites.epoch_suite(tmp_path, rows=3000)
    assert figures["epoch_read_errors"] == 0, figures
    assert figures["epoch_max_rss_mb"] <= suites.EPOCH_RSS_LIMIT_MB, figures
