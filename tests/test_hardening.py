"""Hardening (issue 14) through real mounts: what a neighbour, a slow service or a full disk must not do."""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.emulator import RunningEmulator
from harness.mount import temporary_mount


def _status(mnt: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((mnt / ".encordfs" / "status.json").read_text())


def test_reading_a_file_never_fails_because_a_sibling_was_deleted(tmp_path: Path) -> None:
    """The real get-bulk refuses the whole call when one item is gone (wire §6.4): signing splits the
    call and marks the missing item, so the 999 others stay readable."""
    src = tmp_path / "src" / "pets"
    src.mkdir(parents=True)
    for i in range(12):
        (src / f"p{i:02d}.txt").write_bytes(f"file {i}\n".encode() * (i + 1))
    with RunningEmulator(["--import", str(tmp_path / "src")]) as emu:
        with temporary_mount(emu.domain, emu.key_file) as m:
            folder = m.path / "pets"
            names = sorted(os.listdir(folder))
            doomed = os.getxattr(folder / names[5], "user.encord.uid").decode()
            emu.delete_row(doomed)  # gone on the server; this mount still lists it (TTL)
            for name in names[:5] + names[6:]:
                assert (folder / name).read_bytes() == (src / name).read_bytes(), name
            assert _status(m.path)["counters"].get("urls.sign_splits", 0) >= 1
