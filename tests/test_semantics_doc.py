"""docs/SEMANTICS.md stays true: its xattr table equals what real mounts list -- of the sample in the
default shape, and in the recorded shape with one image sequence made unlistable (its storage item and
its legacy data row refused), so that a sequence's video and ``user.encord.error`` are listed too."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from harness.emulator import RunningEmulator
from harness.mount import temporary_mount

DOC = Path(__file__).resolve().parent.parent / "docs" / "SEMANTICS.md"


def _documented() -> dict[str, set[str]]:
    text = DOC.read_text()
    table = text.split("<!-- xattr-table:start -->")[1].split("<!-- xattr-table:end -->")[0]
    out: dict[str, set[str]] = {}
    for line in table.splitlines():
        m = re.match(r"\| `(user\.encord\.[^`]+)` \| ([^|]+) \|", line)
        if m:
            out[m.group(1)] = {w.strip() for w in m.group(2).split(",")}
    return out


def _listed(path: Path) -> set[str]:
    names = set()
    for name in os.listxattr(path):
        names.add("user.encord.meta.<key>" if name.startswith("user.encord.meta.") else name)
    return names


_KINDS = {b"dicomFile": "DICOM slice", b"imageSequence": "sequence video"}


def _walk(mnt: Path, seen: dict[str, set[str]]) -> None:
    def note(path: Path, kind: str) -> None:
        for name in _listed(path):
            seen.setdefault(name, set()).add(kind)

    for dataset in mnt.iterdir():
        note(dataset, "dataset")
        for entry in dataset.iterdir():
            note(entry, "row")
            if entry.is_dir():
                for member in entry.iterdir():
                    note(member, _KINDS.get(os.getxattr(member, "user.encord.item_type"), "member"))


def _refuse_one_sequence(emu: RunningEmulator) -> None:
    client = emu.client()
    for entry in client.get_datasets():
        rows: list[Any] = client.get_dataset(entry["dataset"].dataset_hash).data_rows
        for row in rows:
            if row.get("is_optimised_image_group") and row.get("backing_item_uuid"):
                emu.add_faults(
                    [
                        {"endpoint": "v2.items.get_bulk", "uid": str(row["backing_item_uuid"]), "status": 403},
                        {"endpoint": "legacy.datarow.get", "uid": row.uid, "status": 403},
                    ]
                )
                return
    raise AssertionError("the sample has no image sequence")


def test_xattr_table_matches_the_mount(sample_emulator: RunningEmulator, recorded_emulator: RunningEmulator) -> None:
    doc = _documented()
    seen: dict[str, set[str]] = {}
    with temporary_mount(sample_emulator.domain, sample_emulator.key_file) as mounted:
        _walk(mounted.path, seen)
    _refuse_one_sequence(recorded_emulator)
    try:
        with temporary_mount(recorded_emulator.domain, recorded_emulator.key_file) as mounted:
            _walk(mounted.path, seen)
    finally:
        recorded_emulator.clear_faults()
    # Every listed name is documented, and every documented name is listed somewhere.
    assert set(seen) == set(doc), set(seen) ^ set(doc)
    for name, kinds in seen.items():
        documented = doc[name]
        # A DICOM slice is a member: what members list may be documented on "member" only.
        kinds = {("member" if k == "DICOM slice" and "DICOM slice" not in documented else k) for k in kinds}
        assert kinds <= documented, (name, kinds, documented)
