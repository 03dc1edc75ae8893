"""Secrets stay secret: no signed URL, key or token in logs; private files; the mount is private."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from tests.support.emulator import RunningEmulator
from tests.support.mount import MountedFS

SECRET_PATTERNS = [
    re.compile(r"Signature="),
    re.compile(r"Expires=\d"),
    re.compile(r"X-Amz-Signature|X-Goog-Signature|sig="),
    re.compile(r"BEGIN OPENSSH PRIVATE KEY"),
    re.compile(r"Bearer\s+\S"),
    re.compile(r"encord-sig=:"),
]


def test_debug_logs_hold_no_secrets_and_files_are_private(sample_emulator: RunningEmulator) -> None:
    work = Path(tempfile.mkdtemp(prefix="encordfs-sec-"))
    try:
        assert sample_emulator.key_file is not None
        with MountedFS(sample_emulator.domain, sample_emulator.key_file, work, "-v") as m:  # -v plus MountedFS's own -v = debug
            files = [p for p in m.path.rglob("*") if p.is_file()][:40]
            for f in files:
                f.read_bytes()
                os.listxattr(f)
            os.setxattr(files[0], "user.encord.meta.secret_test", b"1")
            (m.path / ".encordfs" / "status.json").read_text()
            # A failing read path: expired/forbidden URLs are logged (if at all) without their query.
            sample_emulator.add_faults([{"endpoint": "blob.get", "status": 403, "count": 2}])
            try:
                [p for p in m.path.rglob("*.wav")][0].read_bytes()
            except OSError:
                pass
            mount_proc = m.proc
            assert mount_proc is not None
            st = os.stat(m.path)
            assert "allow_other" not in Path("/proc/mounts").read_text().split(str(m.path))[1].splitlines()[0]
            assert st.st_uid == os.getuid()
        log = m.log_path.read_text()
        assert "DEBUG" in log  # the scan is meaningful only if debug logging ran
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(log), f"secret-looking text in the mount log: {pattern.pattern}"
        cache = work / "cache"
        assert stat.S_IMODE(cache.stat().st_mode) == 0o700
        for path in cache.rglob("*"):
            mode = stat.S_IMODE(path.stat().st_mode)
            if path.is_dir():
                assert mode & 0o077 == 0, (path, oct(mode))
            else:
                assert mode & 0o077 == 0, (path, oct(mode))
    finally:
        shutil.rmtree(work, ignore_errors=True)
