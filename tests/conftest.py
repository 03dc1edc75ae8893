"""Shared fixtures: a sample emulator for the session, real mounts that always clean up."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from encordfs.core.fetch import HTTP_CLIENTS
from encordfs.options import BINDINGS
from harness.emulator import RunningEmulator
from harness.mount import MountedFS, temporary_mount
from harness.trees import Labelled, write_labelled

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
# Inherited by every mount process this session starts, so its leftovers are told apart from the
# mounts of other test sessions running on the same machine at the same time.
os.environ["ENCORDFS_TEST_SESSION"] = str(os.getpid())


def _encordfs_mounts() -> set[str]:
    with open("/proc/mounts") as f:
        return {line.split()[1] for line in f if " fuse.encordfs " in line}


def _started_elsewhere(mountpoint: str) -> bool:
    """A live mount process serves ``mountpoint`` and was not started by this session."""
    path, mark = os.fsencode(mountpoint.replace("\\040", " ")), f"ENCORDFS_TEST_SESSION={os.getpid()}".encode()
    found = False
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        try:
            with open(f"/proc/{proc}/cmdline", "rb") as f:
                if path not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{proc}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    return False
        except OSError:
            continue
        found = True
    return found  # no process at all: a dead mount left behind, counted as ours


def _our_mounts() -> set[str]:
    return {m for m in _encordfs_mounts() if not _started_elsewhere(m)}


@pytest.fixture(scope="session", autouse=True)
def no_mount_left_behind() -> Iterator[None]:
    before = _our_mounts()
    yield
    left = _our_mounts() - before
    assert not left, f"tests left mounts behind: {left}"


@pytest.fixture(params=HTTP_CLIENTS)
def http_client(request: pytest.FixtureRequest) -> str:
    """The read path's transport: a test asking for this runs over libcurl (the default) and httpx."""
    return str(request.param)


@pytest.fixture(scope="module", params=BINDINGS)
def binding(request: pytest.FixtureRequest) -> Iterator[str]:
    """The FUSE binding of the mounts a module starts (``ENCORDFS_BINDING``, which mount processes
    inherit). A module opts in with ``pytestmark = pytest.mark.usefixtures("binding")``: its tests
    then run once per binding (bytes, xattrs, writes, renames, refresh, faults, hostile names)."""
    before = os.environ.get("ENCORDFS_BINDING")
    os.environ["ENCORDFS_BINDING"] = str(request.param)
    try:
        yield str(request.param)
    finally:
        if before is None:
            os.environ.pop("ENCORDFS_BINDING", None)
        else:
            os.environ["ENCORDFS_BINDING"] = before


@pytest.fixture(scope="session")
def sample_emulator() -> Iterator[RunningEmulator]:
    with RunningEmulator(["--sample"]) as emu:
        yield emu


@pytest.fixture(scope="module")
def emulator(request: pytest.FixtureRequest) -> Iterator[RunningEmulator]:
    """The module's own emulator (a module that changes data or needs generated rows does not share the
    session's), started with the module's ``EMULATOR_ARGS``."""
    with RunningEmulator(list(request.module.EMULATOR_ARGS)) as emu:
        yield emu


@pytest.fixture(scope="module")
def sample_mount(sample_emulator: RunningEmulator) -> Iterator[MountedFS]:
    with temporary_mount(sample_emulator.domain, sample_emulator.key_file) as mounted:
        yield mounted


@pytest.fixture(scope="session")
def recorded_emulator() -> Iterator[RunningEmulator]:
    """The sample served as payloads recorded from the real service look (``--shape recorded``)."""
    with RunningEmulator(["--sample", "--shape", "recorded"]) as emu:
        yield emu


@pytest.fixture(scope="session", params=["default", "recorded"])
def shape_emulator(request: pytest.FixtureRequest) -> RunningEmulator:
    """The sample emulator in each shape: tests using it run once per shape."""
    emu: RunningEmulator = request.getfixturevalue(
        "sample_emulator" if request.param == "default" else "recorded_emulator"
    )
    return emu


@pytest.fixture(scope="module")
def shape_mount(shape_emulator: RunningEmulator, binding: str) -> Iterator[MountedFS]:
    with temporary_mount(shape_emulator.domain, shape_emulator.key_file) as mounted:
        yield mounted


@pytest.fixture(scope="session")
def labelled_tree(tmp_path_factory: pytest.TempPathFactory) -> Labelled:
    """``pets``: labelled images (``label``, ``split``, ``camera.id``), a group, a CSV text row."""
    return write_labelled(tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="session")
def labelled_emulator(labelled_tree: Labelled) -> Iterator[RunningEmulator]:
    """The labelled tree imported; read-only users share it (tests that write start their own)."""
    with RunningEmulator(["--import", str(labelled_tree.root)]) as emu:
        yield emu


@pytest.fixture(scope="module")
def efs(options: dict[str, Any]) -> Iterator[Any]:
    """An ``EncordFileSystem`` (fsspec) over the module's ``options`` fixture, closed after the module."""
    from encordfs.fsspec_impl import EncordFileSystem

    fs = EncordFileSystem(**options)
    try:
        yield fs
    finally:
        fs.close()
