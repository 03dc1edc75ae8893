"""Secrets stay secret: no signed URL, key or token in logs; private files; the mount is private."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from harness.emulator import RunningEmulator
from harness.mount import MountedFS

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
        with MountedFS(
            sample_emulator.domain, sample_emulator.key_file, work, "-v"
        ) as m:  # -v plus MountedFS's own -v = debug
            files = [p for p in m.path.rglob("*") if p.is_file()][:40]
            for f in files:
                f.read_bytes()
                os.listxattr(f)
            os.setxattr(files[0], "user.encord.meta.secret_test", b"1")
            (m.path / ".encordfs" / "status.json").read_text()
            # A failing read path: expired/forbidden URLs are logged (if at all) without their query.
            # The file must not have been read above (its bytes would come from the caches and the
            # faults would stay armed for the session's later tests): both 403s have to fire here. So
            # it is in a folder none of the reads above was in (their lookahead prefetched their
            # folders' next files), and nothing is still being prefetched when the faults are armed.
            _wait_prefetch_idle(m.path)
            read_folders = {f.parent for f in files}
            unread = next(p for p in m.path.rglob("*") if p.is_file() and p.parent not in read_folders)
            injected = sample_emulator.stats()["faults.injected"]
            sample_emulator.add_faults([{"endpoint": "blob.get", "status": 403, "count": 2}])
            try:
                unread.read_bytes()
            except OSError:
                pass  # refused twice: EACCES/EIO (or a kernel retry after the faults ran out)
            assert sample_emulator.stats()["faults.injected"] - injected == 2
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
        cached = list(cache.rglob("*"))
        assert any(path.is_file() for path in cached)  # the mount wrote its catalog, journal and blocks here
        for path in cached:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o077 == 0, (path, oct(mode))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _wait_prefetch_idle(mountpoint: Path, timeout_s: float = 30.0) -> None:
    import json
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = json.loads((mountpoint / ".encordfs" / "status.json").read_text())
        if not (status.get("prefetch") or {}).get("in_flight"):
            return
        time.sleep(0.05)
    raise AssertionError("prefetch still busy")


# ---------------------------------------------------------------------------------------------- signed URLs


def _tamper_world(tmp: Path):  # type: ignore[no-untyped-def]
    from encordfs.emulator import synthetic
    from encordfs.emulator.server import Emulator

    emu = Emulator(tmp / "emu")
    ds_hash = emu.store.ingest_synthetic("s", 2, 1000)
    emu.start()
    tag = ds_hash.replace("-", "")[:12]
    return emu, [synthetic.blob_key(f"{tag}.{n}", 1000) for n in (1, 2)]


def test_signed_blob_url_cannot_be_widened_or_prolonged() -> None:
    """A URL for one blob opens that blob only, only until its Expires: every edit is refused."""
    import httpx

    work = Path(tempfile.mkdtemp(prefix="encordfs-tamper-"))
    emu, (mine, other) = _tamper_world(work)
    try:
        url = emu.sign_blob(mine)
        base, query = url.split("?", 1)
        expires = int(query.split("Expires=")[1].split("&")[0])
        signature = query.split("Signature=")[1]
        root = base[: base.index("/blobs/")]
        assert httpx.get(url, trust_env=False).status_code == 200
        forged = [
            f"{root}/blobs/{other}?{query}",  # another blob, same signature
            f"{base}x?{query}",  # a longer key
            f"{base}/?{query}",
            f"{root}/blobs/{mine}/../{other}?{query}",  # traversal
            f"{root}/blobs/{mine.replace(':', '%3A')}?{query}",  # the same key, encoded differently
            f"{base}?Expires={expires + 1}&Signature={signature}",  # longer life
            f"{base}?Expires=9999999999&Signature={signature}",
            f"{base}?Expires=9999999999&{query}",  # a second Expires in front
            f"{base}?Expires={expires}&Signature={signature.upper()}",
            f"{base}?Expires={expires}.0&Signature={signature}",
            f"{base}?Expires={expires}",
            f"{base}?Signature={signature}",
            base,
        ]
        for bad in forged:
            for method in ("GET", "HEAD"):
                status = httpx.request(method, bad, trust_env=False).status_code
                assert status in (403, 404), (method, bad.split("?")[0][-40:], status)
        # Expiry is the emulator's: a 1-second URL is dead after 2 s, and a later Expires appended
        # after the real one does not revive it (the first one is the one signed and checked).
        httpx.post(f"{root}/_emulator/settings", json={"url_ttl_s": 1}, trust_env=False).raise_for_status()
        short = emu.sign_blob(mine)
        time.sleep(2.1)
        assert httpx.get(short, trust_env=False).status_code == 403
        assert httpx.get(short + "&Expires=9999999999", trust_env=False).status_code == 403
    finally:
        emu.stop()
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- mount access


def _mount_options(path: Path) -> list[str]:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(path):
            return fields[3].split(",")
    raise AssertionError(f"{path} is not mounted")


def test_allow_other_adds_default_permissions_and_loose_key_file_warns(sample_emulator: RunningEmulator) -> None:
    work = Path(tempfile.mkdtemp(prefix="encordfs-sec-"))
    try:
        assert sample_emulator.key_file is not None
        loose = work / "loose_key"
        shutil.copy(sample_emulator.key_file, loose)
        os.chmod(loose, 0o644)
        with MountedFS(sample_emulator.domain, loose, work, "--allow-other") as m:
            options = _mount_options(m.path)
            assert "allow_other" in options and "default_permissions" in options, options
            assert stat.S_IMODE(next(m.path.iterdir()).stat().st_mode) == 0o555  # what default_permissions checks
        assert "readable by other users" in m.log() and "chmod 600" in m.log()
        os.chmod(loose, 0o600)
        private = work / "private"
        with MountedFS(sample_emulator.domain, loose, private) as m:
            options = _mount_options(m.path)
            assert "allow_other" not in options, options
        assert "readable by other users" not in m.log()
    finally:
        shutil.rmtree(work, ignore_errors=True)
