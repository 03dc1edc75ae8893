"""A careless user against real mounts (issue 18): each case broke before and must behave now.

Mounts here are started with the real command (``encordfs mount``, detached) and always ended by
``_DaemonMount``'s exit, whatever the test did to the mount process (kill -9, kill -STOP).
"""

from __future__ import annotations

import errno
import functools
import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from encordfs.control import find, mounted_at, process_state
from harness.emulator import RunningEmulator
from harness.mount import MountedFS, encordfs_cli

META = "user.encord.meta."


_encordfs = functools.partial(encordfs_cli, timeout=90)


def _pid_of(stdout: str) -> int:
    return int(stdout.split("(pid ", 1)[1].split(",", 1)[0])


class _DaemonMount:
    """``encordfs mount MNT --daemon`` at ``tmp/mnt`` with its own cache; always cleaned up."""

    def __init__(self, emu: RunningEmulator, tmp: Path, *extra: str, cache: Path | None = None) -> None:
        self.path = tmp / "mnt"
        self.cache = cache or tmp / "cache"
        self.emu, self.extra, self.pid = emu, list(extra), 0

    def mount(self) -> subprocess.CompletedProcess[str]:
        try:
            self.path.mkdir()
        except OSError:  # exists (or is a dead mount: ENOTCONN)
            pass
        assert self.emu.key_file is not None
        done = _encordfs("mount", str(self.path), "--domain", self.emu.domain, "--ssh-key-file", str(self.emu.key_file),
                         "--cache-dir", str(self.cache), "-v", *self.extra)  # fmt: skip
        if done.returncode == 0:
            self.pid = _pid_of(done.stdout)
        return done

    def __enter__(self) -> _DaemonMount:
        done = self.mount()
        assert done.returncode == 0, done.stderr
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pid and process_state(self.pid) != "gone":
            os.kill(self.pid, signal.SIGCONT)
        if mounted_at(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        if self.pid:
            deadline = time.monotonic() + 15
            while process_state(self.pid) != "gone" and time.monotonic() < deadline:
                time.sleep(0.05)
            if process_state(self.pid) != "gone":
                os.kill(self.pid, signal.SIGKILL)

    def first_file(self) -> Path:
        return next(p for p in sorted((self.path / "street-scenes").iterdir()) if p.is_file())


@pytest.fixture()
def emu(sample_emulator: RunningEmulator) -> RunningEmulator:
    return sample_emulator


# 1 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["cache", "log"])
@pytest.mark.parametrize("detached", [True, False])
def test_a_cache_dir_or_log_inside_the_mountpoint_is_refused_before_anything_is_made(
    tmp_path: Path, emu: RunningEmulator, where: str, detached: bool
) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    option = ["--cache-dir", str(mnt / ".cache")] if where == "cache" else ["--log-file", str(mnt / "logs" / "m.log")]
    done = _encordfs("mount", str(mnt), "--domain", emu.domain, "--ssh-key-file", str(emu.key_file), *option,
                     *([] if detached else ["--foreground"]), timeout=30)  # fmt: skip
    assert done.returncode == 1
    assert "is inside the mount point" in done.stderr and "Traceback" not in done.stderr
    assert not mounted_at(mnt) and list(mnt.iterdir()) == []


# 2 -------------------------------------------------------------------------------------------------


def test_control_commands_work_on_a_read_only_mount(tmp_path: Path, emu: RunningEmulator) -> None:
    with _DaemonMount(emu, tmp_path, "--read-only") as m:
        status = _encordfs("status", str(m.path), "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["read_only"] is True
        assert _encordfs("flush", str(m.path), "--timeout", "5").returncode == 0
        refreshed = _encordfs("refresh", str(m.path / "street-scenes"))
        assert refreshed.returncode == 0, refreshed.stderr
        done = _encordfs("unmount", str(m.path))
        assert done.returncode == 0, done.stderr
        assert not mounted_at(m.path) and process_state(m.pid) == "gone"


# 3 -------------------------------------------------------------------------------------------------


def test_a_crashed_mount_is_cleaned_by_unmount_and_by_the_next_mount(tmp_path: Path, emu: RunningEmulator) -> None:
    with _DaemonMount(emu, tmp_path) as m:
        os.kill(m.pid, signal.SIGKILL)
        time.sleep(0.3)
        assert mounted_at(m.path)
        done = _encordfs("unmount", str(m.path), timeout=30)
        assert done.returncode == 0, done.stderr
        assert "gone" in done.stderr and not mounted_at(m.path)

        again = m.mount()
        assert again.returncode == 0, again.stderr
        os.kill(m.pid, signal.SIGKILL)
        time.sleep(0.3)
        third = m.mount()  # the dead mount is ours: cleaned with a warning, then mounted
        assert third.returncode == 0, third.stderr
        assert m.first_file().read_bytes()


# 4 -------------------------------------------------------------------------------------------------


def test_control_commands_return_within_their_timeout_on_a_stopped_mount(tmp_path: Path, emu: RunningEmulator) -> None:
    with _DaemonMount(emu, tmp_path) as m:
        os.kill(m.pid, signal.SIGSTOP)
        started = time.monotonic()
        status = _encordfs("status", str(m.path), "--timeout", "3", timeout=30)
        assert status.returncode == 1 and "stopped" in status.stderr
        assert time.monotonic() - started < 10
        started = time.monotonic()
        done = _encordfs("unmount", str(m.path), "--timeout", "5", timeout=30)
        assert time.monotonic() - started < 12, done
        assert done.returncode == 0, done.stderr
        assert not mounted_at(m.path)  # detached; the stopped process still holds its cache dir
        assert "stopped" in done.stderr


def test_lazy_unmount_of_a_stopped_mount_detaches_at_once(tmp_path: Path, emu: RunningEmulator) -> None:
    with _DaemonMount(emu, tmp_path) as m:
        os.kill(m.pid, signal.SIGSTOP)
        started = time.monotonic()
        done = _encordfs("unmount", "--lazy", str(m.path), "--timeout", "2", timeout=30)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 8 and not mounted_at(m.path)


# 5 -------------------------------------------------------------------------------------------------


def test_refresh_and_prefetch_refuse_paths_outside_a_mount(tmp_path: Path) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text("mine")
    done = _encordfs("refresh", str(plain))
    assert done.returncode == 2 and "not inside an encordfs mount" in done.stderr
    assert "user.encordfs.refresh" not in os.listxattr(plain)
    done = _encordfs("prefetch", str(tmp_path))
    assert done.returncode == 2 and "not inside an encordfs mount" in done.stderr


# 6 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, message",
    [("--uid", "-1", "between 0 and"), ("--gid", "4294967295", "between 0 and"), ("--file-mode", "7777", "outside 0777"),
     ("--dir-mode", "1755", "outside 0777")],
)  # fmt: skip
def test_bad_owner_and_modes_are_refused(tmp_path: Path, option: str, value: str, message: str) -> None:
    (tmp_path / "m").mkdir()
    done = _encordfs("mount", str(tmp_path / "m"), "--domain", "http://127.0.0.1:9", option, value, timeout=30)
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr


# 7 -------------------------------------------------------------------------------------------------


def test_bad_xattr_bytes_are_refused_quietly_and_queue_nothing(sample_mount: MountedFS) -> None:
    f = next(p for p in sorted((sample_mount.path / "street-scenes").iterdir()) if p.is_file())
    before = json.loads((sample_mount.path / ".encordfs" / "status.json").read_text())["writes"]["pending_ops"]
    for name, value in [(META + "k", b'"\\ud800"'), ("user.encord.client_metadata", b'{"a": "\\udfff"}')]:
        with pytest.raises(OSError) as info:
            os.setxattr(f, name, value)
        assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        os.setxattr(f, b"user.encord.meta.\xff\xfe", b"1")
    assert info.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as info:
        os.getxattr(f, b"user.encord.meta.\xff\xfe")
    assert info.value.errno == errno.ENODATA
    after = json.loads((sample_mount.path / ".encordfs" / "status.json").read_text())["writes"]["pending_ops"]
    assert after == before
    log = sample_mount.log()
    assert "Traceback" not in log and "surrogate" not in log.replace("DEBUG", "").split("WARNING")[-1]


# 8 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_requested_stop_of_a_foreground_mount_exits_0(tmp_path: Path, emu: RunningEmulator, sig: int) -> None:
    assert emu.key_file is not None
    with MountedFS(emu.domain, emu.key_file, tmp_path) as m:
        assert m.proc is not None
        m.proc.send_signal(sig)
        assert m.proc.wait(30) == 0, m.log()[-2000:]
        assert "could not mount" not in m.log() and not mounted_at(m.path)


# 9 -------------------------------------------------------------------------------------------------


def test_a_damaged_catalog_is_rebuilt_with_a_warning(tmp_path: Path, emu: RunningEmulator) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "catalog.sqlite").write_bytes(b"this is not a database, it is a damaged file" * 100)
    with _DaemonMount(emu, tmp_path, cache=cache) as m:
        assert m.first_file().read_bytes()
    log = (cache / "mount.log").read_text()
    assert "catalog" in log and "damaged" in log and "Traceback" not in log
    assert list(cache.glob("catalog.sqlite.damaged-*"))


def test_a_damaged_journal_refuses_the_mount_and_is_kept(tmp_path: Path, emu: RunningEmulator) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    damaged = b"unpushed edits live here, but the header is gone" * 100
    (cache / "journal.sqlite").write_bytes(damaged)
    m = _DaemonMount(emu, tmp_path, cache=cache)
    try:
        done = m.mount()
    finally:
        m.__exit__()
    assert done.returncode == 1
    assert str(cache / "journal.sqlite") in done.stderr and "damaged" in done.stderr
    assert (cache / "journal.sqlite").read_bytes() == damaged and not mounted_at(m.path)
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(cache / "journal.sqlite").execute("SELECT 1 FROM ops")


# 10 ------------------------------------------------------------------------------------------------


def test_a_rename_the_naming_rules_would_not_keep_is_eperm(sample_mount: MountedFS) -> None:
    f = next(p for p in sorted((sample_mount.path / "street-scenes").iterdir()) if p.suffix == ".jpg")
    with pytest.raises(OSError) as info:
        os.rename(f, f.with_suffix(""))
    assert info.value.errno == errno.EPERM
    assert f.exists() and not f.with_suffix("").exists()
    done = subprocess.run(["mv", str(f), str(f.with_suffix(""))], capture_output=True, text=True)
    assert done.returncode != 0 and "Operation not permitted" in done.stderr


# 11 ------------------------------------------------------------------------------------------------


def test_a_remount_right_after_unmount_finds_the_cache_dir_free(tmp_path: Path, emu: RunningEmulator) -> None:
    with _DaemonMount(emu, tmp_path) as m:
        setx = m.first_file()
        os.setxattr(setx, META + "misuse_probe", b"1")
        done = _encordfs("unmount", str(m.path), "--timeout", "2")
        assert done.returncode == 0, done.stderr
        assert process_state(m.pid) == "gone"
        again = m.mount()
        assert again.returncode == 0, again.stderr
        os.removexattr(m.first_file(), META + "misuse_probe")
        assert _encordfs("flush", str(m.path), "--timeout", "30").returncode == 0


# the smaller ones -------------------------------------------------------------------------------------


def test_a_key_readable_by_others_is_warned_about_on_the_terminal(tmp_path: Path, emu: RunningEmulator) -> None:
    assert emu.key_file is not None
    key = tmp_path / "key"
    key.write_bytes(Path(emu.key_file).read_bytes())
    key.chmod(0o644)
    (tmp_path / "mnt").mkdir()
    m = _DaemonMount(emu, tmp_path)
    try:
        done = _encordfs("mount", str(m.path), "--domain", emu.domain, "--ssh-key-file", str(key), "--cache-dir",
                         str(tmp_path / "cache"))  # fmt: skip
        if done.returncode == 0:
            m.pid = _pid_of(done.stdout)
    finally:
        m.__exit__()
    assert done.returncode == 0, done.stderr
    assert "readable by other users" in done.stderr


@pytest.mark.parametrize("kind", ["passphrase", "rsa", "random", "public"])
def test_an_unusable_key_says_what_is_wrong_and_what_is_expected(tmp_path: Path, kind: str) -> None:
    key = tmp_path / "key"
    if kind == "random":
        key.write_bytes(os.urandom(400))
    else:
        args = {"passphrase": ["-t", "ed25519", "-N", "secret"], "rsa": ["-t", "rsa", "-b", "2048", "-N", ""],
                "public": ["-t", "ed25519", "-N", ""]}[kind]  # fmt: skip
        subprocess.run(["ssh-keygen", "-q", *args, "-f", str(key)], check=True, capture_output=True)
        if kind == "public":
            key = key.with_suffix(".pub")
    (tmp_path / "m").mkdir()
    done = _encordfs("mount", str(tmp_path / "m"), "--foreground", "--domain", "http://127.0.0.1:9", "--ssh-key-file",
                     str(key), "--cache-dir", str(tmp_path / "c"), timeout=60)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "unencrypted OpenSSH Ed25519 private key" in done.stderr
    assert {"passphrase": "passphrase", "rsa": "RSA", "random": "not a text key", "public": "public key"}[
        kind
    ] in done.stderr
    assert "PRIVATE KEY" not in done.stderr


@pytest.fixture()
def html_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _html(self) -> None:
            body = b"<html><body>Welcome to our corporate proxy</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _html

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_domain_that_answers_html_says_so(tmp_path: Path, emu: RunningEmulator, html_server: str) -> None:
    assert emu.key_file is not None
    (tmp_path / "m").mkdir()
    done = _encordfs("mount", str(tmp_path / "m"), "--foreground", "--domain", html_server, "--ssh-key-file",
                     str(emu.key_file), "--cache-dir", str(tmp_path / "c"), timeout=60)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "is --domain right?" in done.stderr
    assert find(tmp_path / "m") is None


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                continue
    return found


def test_demo_cleans_up_after_ctrl_c_even_when_its_stdout_is_gone(tmp_path: Path) -> None:
    """``scripts/demo | tee log`` then Ctrl-C: tee dies with the demo's pipe, the cleanup must not."""
    mnt, data = tmp_path / "demo-mnt", tmp_path / "demo-data"
    proc = subprocess.Popen([sys.executable, "-m", "encordfs", "demo", str(mnt), "--data-dir", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not mounted_at(mnt) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert mounted_at(mnt), "the demo did not mount"
        assert proc.stdout is not None
        proc.stdout.close()  # the reader (tee) is gone: every later print hits a broken pipe
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) in (0, 130)
        assert not mounted_at(mnt)
        deadline = time.monotonic() + 15
        while _processes_mentioning(str(data)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _processes_mentioning(str(data)), "the emulator or the mount outlived the demo"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if mounted_at(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        for pid in _processes_mentioning(str(data)):
            os.kill(pid, signal.SIGKILL)


def test_unmount_waits_for_queued_writes_within_its_timeout(tmp_path: Path, emu: RunningEmulator) -> None:
    """Pushes are refused while we unmount: ``--timeout 3`` waits about that long (not the mount's own
    10 s), says what it left, and the next mount pushes it."""
    with _DaemonMount(emu, tmp_path) as m:
        f = m.first_file()
        uid = os.getxattr(f, "user.encord.uid").decode()
        emu.add_faults(
            [{"endpoint": e, "status": 503} for e in ("v2.items.patch*", "v2.items.get_bulk", "legacy.datarow.post")]
        )
        try:
            os.setxattr(f, META + "unmount_probe", b'"queued"')
            started = time.monotonic()
            done = _encordfs("unmount", str(m.path), "--timeout", "3", timeout=60)
            took = time.monotonic() - started
        finally:
            emu.reset()
        assert done.returncode == 0 and "1 row(s) pending" in done.stderr, done.stderr
        assert 1.5 <= took < 8, took  # waited for the queue (not the mount's own 10 s), then stopped
        if "still releasing" in done.stderr:  # allowed, when said: then it ends within seconds
            deadline = time.monotonic() + 10
            while process_state(m.pid) != "gone" and time.monotonic() < deadline:
                time.sleep(0.1)
        assert process_state(m.pid) == "gone"
        again = m.mount()  # the journal is pushed by the next mount
        assert again.returncode == 0, again.stderr
        assert _encordfs("flush", str(m.path), "--timeout", "30").returncode == 0
        from encord.orm.dataset import DatasetAccessSettings

        client = emu.client()
        ds_hash = next(
            d["dataset"].dataset_hash for d in client.get_datasets() if d["dataset"].title == "street-scenes"
        )
        ds = client.get_dataset(ds_hash, dataset_access_settings=DatasetAccessSettings(fetch_client_metadata=True))
        assert next(r for r in ds.data_rows if r.uid == uid).client_metadata.get("unmount_probe") == "queued"
        os.removexattr(m.first_file(), META + "unmount_probe")
        assert _encordfs("flush", str(m.path), "--timeout", "30").returncode == 0
