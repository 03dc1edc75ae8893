"""docs/SEMANTICS.md stays true: its xattr table equals what a real mount lists."""

from __future__ import annotations

import os
import re
from pathlib import Path

from harness.mount import MountedFS

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


def test_xattr_table_matches_the_mount(sample_mount: MountedFS) -> None:
    doc = _documented()
    mnt = sample_mount.path
    seen: dict[str, set[str]] = {}

    def note(path: Path, kind: str) -> None:
        for name in _listed(path):
            seen.setdefault(name, set()).add(kind)

    for dataset in mnt.iterdir():
        note(dataset, "dataset")
        for entry in dataset.iterdir():
            note(entry, "row")
            if entry.is_dir():
                for member in entry.iterdir():
                    is_dicom = os.getxattr(member, "user.encord.item_type") == b"dicomFile"
                    note(member, "DICOM slice" if is_dicom else "member")
    # Every listed name is documented, and every documented name is listed somewhere.
    assert set(seen) == set(doc), set(seen) ^ set(doc)
    for name, kinds in seen.items():
        documented = doc[name]
        # A DICOM slice is a member: what members list may be documented on "member" only.
        kinds = {("member" if k == "DICOM slice" and "DICOM slice" not in documented else k) for k in kinds}
        assert kinds <= documented, (name, kinds, documented)
