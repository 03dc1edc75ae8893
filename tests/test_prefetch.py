"""`encordfs prefetch` fills the disk cache: after a remount, a full pass makes no byte-server request."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.emulator import RunningEmulator
from harness.mount import MountedFS


def test_prefetch_then_a_second_pass_is_served_from_the_cache(sample_emulator: RunningEmulator) -> None:
    assert sample_emulator.key_file is not None
    work = Path(tempfile.mkdtemp(prefix="encordfs-prefetch-"))
    try:
        with MountedFS(sample_emulator.domain, sample_emulator.key_file, work) as m:
            done = subprocess.run(
                [sys.executable, "-m", "encordfs", "prefetch", str(m.path / "street-scenes"), str(m.path / "medical")],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stderr
            assert "prefetch:" in done.stderr and "ETA" in done.stderr
            first = {
                p: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in m.path.joinpath("street-scenes").rglob("*")
                if p.is_file()
            }
        # A new mount on the same cache dir: the kernel's page cache is gone, the disk cache is not.
        before = sample_emulator.stats()["blob.requests"]
        with MountedFS(sample_emulator.domain, sample_emulator.key_file, work) as m:
            second = {
                p: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in m.path.joinpath("street-scenes").rglob("*")
                if p.is_file()
            }
            for p in m.path.joinpath("medical").rglob("*"):
                if p.is_file():
                    p.read_bytes()
        assert sample_emulator.stats()["blob.requests"] == before
        assert list(second.values()) == list(first.values()) and len(second) >= 80
        # Each file is one file of the disk cache holding its bytes at their own offsets: what a
        # passthrough open hands the kernel.
        cached = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (work / "cache" / "files").glob("??/*")}
        assert set(first.values()) <= cached
        missing = subprocess.run(
            [sys.executable, "-m", "encordfs", "prefetch", str(work / "nope")], capture_output=True, text=True
        )
        assert (
            missing.returncode != 0
            and missing.stderr.startswith("encordfs: error: ")
            and "Traceback" not in missing.stderr
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
