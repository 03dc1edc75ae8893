"""Operating a mount: --daemon, mount(8) and fstab through the helper, configuration precedence,
/metrics, uid/gid/modes, the Python API, logging without secrets, and the pinned public surface.

Every mount here is real and is ended by the test that made it (``_Unmounter`` unmounts whatever is
still mounted and waits for the mount process, by pid, even when an assertion failed).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import encordfs
from encordfs import errors, logs, metrics, mount_helper
from encordfs import settings as config
from encordfs.control import mounted_at
from harness.emulator import RunningEmulator
from harness.mount import encordfs_cli

REPO = Path(__file__).resolve().parent.parent


_encordfs = functools.partial(encordfs_cli, timeout=90)


def _pid_of(stdout: str) -> int:
    # "mounted DOMAIN at PATH (pid N, log FILE)"
    return int(stdout.split("(pid ", 1)[1].split(",", 1)[0])


def _wait_gone(pid: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # our own child (the helper's daemon is not): reap it so it does not linger as a zombie
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(") ", 1)[1].startswith("Z"):
                return True
        time.sleep(0.05)
    return False


class _Unmounter:
    """Ends a mount the test started however the test ends; ``pid`` (when known) must exit too."""

    def __init__(self, path: Path) -> None:
        self.path, self.pid = path, None  # type: ignore[var-annotated]

    def __enter__(self) -> _Unmounter:
        return self

    def __exit__(self, *exc: object) -> None:
        for _ in range(20):
            if not mounted_at(self.path):
                break
            if subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        if mounted_at(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        if self.pid is not None and not _wait_gone(self.pid, 15):
            os.kill(self.pid, 9)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _first_file(mnt: Path) -> Path:
    return next(p for p in sorted((mnt / "street-scenes").iterdir()) if p.is_file())


# -- public surface --------------------------------------------------------------------------------


def test_public_surface_is_pinned() -> None:
    assert encordfs.__all__ == ["EncordFileSystem", "RunningMount", "__version__", "mount"]
    for name in encordfs.__all__:
        assert getattr(encordfs, name) is not None
    assert encordfs.mount is encordfs.api.mount
    assert encordfs.EncordFileSystem.protocol == ("encord",)


def test_import_encordfs_stays_light() -> None:
    code = "import sys, encordfs; print(sorted(m for m in ('fsspec', 'encord', 'mfusepy', 'pydantic_settings') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# -- configuration ---------------------------------------------------------------------------------


def test_config_precedence_cli_env_file_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ENCORDFS_") or name == "ENCORD_SSH_KEY_FILE":
            monkeypatch.delenv(name)
    toml = tmp_path / "encordfs.toml"
    toml.write_text(
        'domain = "http://file"\ncache_dir = "/file/cache"\nfile_mode = "0440"\nuid = 7\nread_only = true\n'
    )
    monkeypatch.setenv("ENCORDFS_CACHE_DIR", "/env/cache")
    monkeypatch.setenv("ENCORDFS_UID", "8")
    monkeypatch.setenv("ENCORD_SSH_KEY_FILE", "/env/key")
    merged = config.resolve({"uid": 9, "domain": None}, toml)
    assert merged.uid == 9  # command line over environment and file
    assert merged.cache_dir == "/env/cache"  # environment over file
    assert merged.domain == "http://file" and merged.file_mode == 0o440 and merged.read_only  # file over defaults
    assert merged.ssh_key_file == "/env/key" and merged.dir_mode == 0o555 and merged.log_format == "text"  # defaults
    monkeypatch.setenv("ENCORDFS_CONFIG", str(toml))
    assert config.resolve({}).domain == "http://file"  # the file may also come from the environment
    toml.write_text('domian = "typo"\n')
    with pytest.raises(errors.InvalidValue, match="unknown option 'domian'"):
        config.resolve({}, toml)
    with pytest.raises(errors.InvalidValue, match="octal"):
        config.resolve({"file_mode": "rwx"})


def test_daemon_config_env_file_modes_and_metrics(tmp_path: Path, sample_emulator: RunningEmulator) -> None:
    """One real mount: --daemon returns only once it serves; the file, the environment and the command
    line each supply some options; uid/gid/modes show in stat; /metrics answers with counters."""
    mnt, log_file, port = tmp_path / "mnt", tmp_path / "logs" / "mount.log", _free_port()
    mnt.mkdir()
    toml = tmp_path / "encordfs.toml"
    toml.write_text(
        f'domain = "http://127.0.0.1:9"\nssh_key_file = "{sample_emulator.key_file}"\ncache_dir = "{tmp_path / "cache"}"\n'
        f'uid = 4321\ngid = 1234\nfile_mode = "0440"\ndir_mode = "0700"\nmetrics_port = {port}\n'
    )
    env = {
        **os.environ,
        "ENCORDFS_DOMAIN": sample_emulator.domain,
        "ENCORDFS_DIR_MODE": "0711",
        "ENCORDFS_LOG_FORMAT": "json",
    }
    with _Unmounter(mnt) as cleanup:
        done = _encordfs(
            "mount",
            str(mnt),
            "--daemon",
            "--config",
            str(toml),
            "--dir-mode",
            "0750",
            "--log-file",
            str(log_file),
            "-v",
            env=env,
        )
        assert done.returncode == 0, done.stderr
        cleanup.pid = _pid_of(done.stdout)
        assert mounted_at(mnt) == "fuse.encordfs"  # ready when the command returned, not later
        assert str(log_file) in done.stdout

        first = _first_file(mnt)
        st, dst = first.stat(), (mnt / "street-scenes").stat()
        assert (st.st_uid, st.st_gid, dst.st_uid, dst.st_gid) == (4321, 1234, 4321, 1234)  # file
        assert stat.S_IMODE(st.st_mode) == 0o440  # file
        assert stat.S_IMODE(dst.st_mode) == 0o750  # command line over environment (0711) over file (0700)
        assert first.read_bytes()  # environment's domain over the file's unreachable one

        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert body.status_code == 200 and body.headers["content-type"].startswith("text/plain; version=0.0.4")
        values = {
            line.split()[0]: float(line.split()[1])
            for line in body.text.splitlines()
            if line and not line.startswith("#")
        }
        # the bytes came through a read, or through the kernel from a passthrough backing file
        served = values.get("encordfs_reader_reads_total", 0) + values.get("encordfs_cache_backing_opens_total", 0)
        assert served >= 1
        assert values["encordfs_urls_signs_total"] >= 1
        assert values["encordfs_writes_pending_rows"] == 0
        assert "# TYPE encordfs_urls_signs_total counter" in body.text
        assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=10).status_code == 404

        done = _encordfs("unmount", str(mnt))
        assert done.returncode == 0, done.stderr
        assert _wait_gone(cleanup.pid)
    records = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
    assert any("mounting" in r["msg"] for r in records), log_file.read_text()[-2000:]
    assert "?" not in log_file.read_text().replace("?<redacted>", "")  # no URL query (signature) in the log


def test_foreground_and_daemon_are_exclusive(tmp_path: Path) -> None:
    done = _encordfs("mount", str(tmp_path), "--daemon", "--foreground")
    assert done.returncode == 2 and "not allowed with" in done.stderr


# -- mount(8) and fstab ----------------------------------------------------------------------------


def test_mount_helper_parses_what_mount8_passes() -> None:
    fake, argv = mount_helper.parse(
        [
            "encord",
            "/mnt/x",
            "-n",
            "-o",
            "rw,noauto,_netdev,x-systemd.automount,domain=http://h:1,ssh_key_file=/k,ro,uid=5,file_mode=0400",
            "-t",
            "fuse.encordfs",
        ]
    )
    assert not fake
    assert argv == [
        "mount",
        "/mnt/x",
        "--daemon",
        "--domain",
        "http://h:1",
        "--ssh-key-file",
        "/k",
        "--read-only",
        "--uid",
        "5",
        "--file-mode",
        "0400",
    ]
    fake, argv = mount_helper.parse(["https://api.us.encord.com", "/m", "-fv", "-o", "cache-dir=/c"])
    assert fake and argv == [
        "mount",
        "/m",
        "--daemon",
        "--cache-dir",
        "/c",
        "--domain",
        "https://api.us.encord.com",
        "-v",
    ]
    with pytest.raises(mount_helper.UsageError, match="unknown option 'colour=blue'"):
        mount_helper.parse(["encord", "/m", "-o", "colour=blue"])
    with pytest.raises(mount_helper.UsageError):
        mount_helper.parse(["/m"])


@pytest.fixture
def installed_helper(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or not shutil.which("mount") or not shutil.which("umount"):
        pytest.skip("mount(8) helpers are installed and run by root")
    sbin = Path("/sbin")
    installed = [sbin / "mount.fuse.encordfs", sbin / "mount.encordfs"]
    if any(p.exists() for p in installed):
        pytest.skip("a mount.encordfs helper is already installed here; not replacing it")
    try:
        subprocess.run(
            [str(REPO / "contrib" / "install-mount-helper"), str(sbin), sys.executable], check=True, capture_output=True
        )
        yield sbin
    finally:
        for p in installed:
            p.unlink(missing_ok=True)


def _mount8(cleanup: _Unmounter, *args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    cleanup.pid = _pid_of(done.stdout)


def test_mount_t_fuse_encordfs_and_umount(
    installed_helper: Path, tmp_path: Path, sample_emulator: RunningEmulator
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    opts = f"domain={sample_emulator.domain},ssh_key_file={sample_emulator.key_file},cache_dir={tmp_path / 'cache'},ro,noauto"
    with _Unmounter(mnt) as cleanup:
        _mount8(cleanup, "-t", "fuse.encordfs", "encord", str(mnt), "-o", opts)
        assert mounted_at(mnt) == "fuse.encordfs"
        assert sorted(os.listdir(mnt)) == ["media-misc", "medical", "street-scenes"]
        with pytest.raises(OSError):  # ro reached the mount
            os.setxattr(_first_file(mnt), "user.encord.meta.split", b'"x"')
        done = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert not mounted_at(mnt)
        assert _wait_gone(cleanup.pid), "umount did not end the mount process"


def test_fstab_line(installed_helper: Path, tmp_path: Path, sample_emulator: RunningEmulator) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"encord {mnt} fuse.encordfs domain={sample_emulator.domain},ssh_key_file={sample_emulator.key_file},"
        f"cache_dir={tmp_path / 'cache'},file_mode=0400,noauto,_netdev 0 0\n"
    )
    with _Unmounter(mnt) as cleanup:
        _mount8(cleanup, "--fstab", str(fstab), str(mnt))
        assert stat.S_IMODE(_first_file(mnt).stat().st_mode) == 0o400
        assert subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0
        assert _wait_gone(cleanup.pid)


# -- the Python API --------------------------------------------------------------------------------


def test_python_api_mount_context_manager(tmp_path: Path, sample_emulator: RunningEmulator) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with _Unmounter(mnt) as cleanup:
        with encordfs.mount(
            mnt, domain=sample_emulator.domain, ssh_key_file=sample_emulator.key_file, cache_dir=tmp_path / "cache"
        ) as m:
            cleanup.pid = m.pid
            assert m.path == mnt.resolve() and m.mounted
            target = _first_file(m.path)
            uid = os.getxattr(target, "user.encord.uid").decode()
            with open(target, "rb") as f:
                assert f.read(2) and m.status()["open_handles"] == 1
            os.setxattr(target, "user.encord.meta.api_test", b'"yes"')
            assert m.flush(20)
            assert m.status()["writes"]["pending_rows"] == 0 and "counters" in m.status()
            assert _server_metadata(sample_emulator, uid).get("api_test") == "yes"
            os.removexattr(target, "user.encord.meta.api_test")  # the sample is shared by the session
            assert m.flush(20)
        assert not mounted_at(mnt) and not m.mounted
        assert _wait_gone(m.pid)
    assert "api_test" not in _server_metadata(sample_emulator, uid)


def _server_metadata(emu: RunningEmulator, uid: str) -> dict[str, object]:
    """A street-scenes row's client metadata as the SDK reads it from the emulator."""
    from encord.orm.dataset import DatasetAccessSettings

    client = emu.client()
    ds_hash = next(d["dataset"].dataset_hash for d in client.get_datasets() if d["dataset"].title == "street-scenes")
    ds = client.get_dataset(ds_hash, dataset_access_settings=DatasetAccessSettings(fetch_client_metadata=True))
    return dict(next(r for r in ds.data_rows if r.uid == uid).client_metadata or {})


# -- metrics and logs (no mount) ---------------------------------------------------------------------


def test_metrics_render() -> None:
    text = metrics.render(
        {"reader.reads": 3, "reader.budget_peak_bytes": 10},
        {"open_handles": 2, "read_only": False, "writes": {"pending_rows": 1, "pushed_rows_total": 4, "parked": [{}]}},
    )
    assert "# TYPE encordfs_reader_reads_total counter\nencordfs_reader_reads_total 3" in text
    assert "# TYPE encordfs_reader_budget_peak_bytes gauge\nencordfs_reader_budget_peak_bytes 10" in text
    assert "encordfs_open_handles 2" in text and "encordfs_writes_pending_rows 1" in text
    assert "encordfs_writes_pushed_rows_total 4" in text and "encordfs_writes_parked_rows 1" in text


def test_logs_never_show_signed_urls_keys_or_tokens(tmp_path: Path) -> None:
    log_file = tmp_path / "x.log"
    logs.setup(1, log_file, "json")
    try:
        log = logging.getLogger("encordfs.test")
        log.info("fetch %s failed", "http://127.0.0.1:5/blobs/abc?expires=1&signature=SECRET")
        log.info("key -----BEGIN OPENSSH PRIVATE KEY-----\nSECRET\n-----END OPENSSH PRIVATE KEY----- loaded")
        log.info("headers {'Authorization': 'SECRET', 'x': 1}")
        try:
            raise RuntimeError("boom https://h/x?token=SECRET")
        except RuntimeError:
            log.exception("failed")
    finally:
        logs.setup(0)
    text = log_file.read_text()
    assert "SECRET" not in text, text
    records = [json.loads(line) for line in text.splitlines()]
    assert records[0]["msg"] == "fetch http://127.0.0.1:5/blobs/abc?<redacted> failed"
    assert records[0]["level"] == "info" and records[0]["logger"] == "encordfs.test"
    assert "exc" in records[-1]
