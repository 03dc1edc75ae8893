"""A first ``ls -l`` through a real mount (the default mfusepy binding): the kernel's READDIRPLUS is
answered with every entry's attributes, so listing a folder makes no per-entry lookup, and what
``ls -l`` prints equals what the SDK says of each row (docs/SEMANTICS.md, "Loading and listing").

Lookups are observed through the path cache's misses in ``/.encordfs/status.json``: with the
default binding every kernel LOOKUP resolves a path, and a path not seen before is a miss.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.dirents import getdents_small
from harness.emulator import RunningEmulator
from harness.mount import MountedFS, temporary_mount

# Every mount here runs once per FUSE binding (kernel, mfusepy): see conftest ``binding``.
pytestmark = pytest.mark.usefixtures("binding")

ROWS = 300


EMULATOR_ARGS = ["--generate", f"listing:{ROWS}:700"]  # for conftest's ``emulator``


@pytest.fixture()
def mount(emulator: RunningEmulator) -> Iterator[MountedFS]:
    with temporary_mount(emulator.domain, emulator.key_file) as mounted:
        yield mounted


def _sdk_rows(emulator: RunningEmulator) -> dict[str, Any]:
    client = emulator.client()
    uid = next(str(d["dataset"].dataset_hash) for d in client.get_datasets() if d["dataset"].title == "listing")
    return {r.title: r for r in client.get_dataset(uid).data_rows}


def _path_cache_misses(m: MountedFS) -> int:
    status: dict[str, Any] = json.loads((m.path / ".encordfs" / "status.json").read_text())
    return int(status["path_cache"]["misses"])


def _ls_l(folder: Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime in whole seconds) of each entry, as GNU ``ls -l`` prints them."""
    out = subprocess.run(
        ["ls", "-l", "-n", "--time-style=+%s", str(folder)], capture_output=True, text=True, check=True
    ).stdout
    rows = []
    for line in out.splitlines()[1:]:  # after "total N"
        mode, _links, _uid, _gid, size, mtime, name = line.split(maxsplit=6)
        assert mode.startswith("-r"), line
        rows.append((name, int(size), int(mtime)))
    return rows


def test_first_ls_l_makes_no_lookup_per_entry(mount: MountedFS, emulator: RunningEmulator) -> None:
    folder = mount.path / "listing"
    before = _path_cache_misses(mount)
    first = _ls_l(folder)
    lookups = _path_cache_misses(mount) - before
    assert len(first) == ROWS
    # A handful of paths (the folder, the control file) are resolved; one per entry would be ≥ ROWS.
    assert lookups < 10, f"{lookups} paths resolved for a listing of {ROWS} entries"
    sdk = _sdk_rows(emulator)
    assert {name for name, _, _ in first} == set(sdk)
    for name, size, mtime in first:
        row = sdk[name]
        assert size == row.file_size, name
        assert mtime == int(row.last_edited_at.timestamp()), name
    assert _ls_l(folder) == first  # the warm listing, from the kernel's caches, says the same


def test_a_listing_resumed_from_every_offset_is_whole(mount: MountedFS) -> None:
    folder = mount.path / "listing"
    names = getdents_small(folder)
    assert len(names) == len(set(names)) == ROWS + 2
    assert set(names) == {".", ".."} | {p.name for p in folder.iterdir()}
