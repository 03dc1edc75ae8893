"""The ``encordfs`` command: mount, unmount, demo, emulator.

Every user mistake ends as one line on stderr (``encordfs: error: ...``) and a non-zero exit: the
``main`` wrapper turns ``errors.FsError`` (and an ``OSError`` about a path the user named) into that
line, so no traceback reaches a user for bad input. Secrets never appear in output: URLs are shown
without their query, keys only by path.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from encordfs import __version__, errors
from encordfs.mountpoint import check_usable, mounted_at, raise_read_ahead, unmount, wait_mounted

log = logging.getLogger("encordfs")

EXIT_ERROR = 1
DEFAULT_DOMAIN = "https://api.encord.com"
READY_TIMEOUT_S = 60.0


def _setup_logging(verbosity: int, log_file: Path | None = None, log_format: str = "text") -> None:
    from encordfs import logs

    logs.setup(verbosity, log_file, log_format)


# -- mount ---------------------------------------------------------------------------------------


def _key_text(args: argparse.Namespace) -> str:
    from encordfs.backend.sdk import load_key

    path = args.ssh_key_file or os.environ.get("ENCORD_SSH_KEY_FILE")
    if path:
        key_path = Path(path).expanduser()
        try:
            if key_path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("SSH key file %s is readable by other users; chmod 600 it", key_path)
        except OSError:
            pass
        return load_key(key_path)
    text = os.environ.get("ENCORD_SSH_KEY")
    if text:
        return text
    raise errors.AuthError("no SSH key: pass --ssh-key-file FILE or set ENCORD_SSH_KEY_FILE")


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from encordfs.app import Settings

    s = Settings(domain=args.domain, read_only=args.read_only, metadata_ttl_s=_ttl(args.metadata_ttl or "60"))
    for name in ("uid", "gid", "file_mode", "dir_mode"):
        if getattr(args, name, None) is not None:
            setattr(s, name, getattr(args, name))
    if args.cache_dir:
        s.cache_dir = Path(args.cache_dir).expanduser().resolve()
    if args.cache_size:
        s.cache_size_bytes = _size(args.cache_size)
    if args.max_metadata_bytes:
        s.max_metadata_bytes = args.max_metadata_bytes
    return s


TTL_PRESETS = {"minimal": 1.0, "indefinite": float(365 * 24 * 3600)}


def _ttl(text: str) -> float:
    if text in TTL_PRESETS:
        return TTL_PRESETS[text]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value):
        raise errors.InvalidValue(f"--metadata-ttl must be minimal, indefinite or seconds, not {text!r}")
    if value < 0:
        raise errors.InvalidValue("--metadata-ttl must not be negative")
    return value


def _size(text: str) -> int:
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        size = int(float(t[: len(t) - len(unit)]) * units[unit])
    except (ValueError, OverflowError):  # OverflowError: inf
        size = -1
    if size < 0:
        raise errors.InvalidValue(f"--cache-size must be a size like 10G or 512M, not {text!r}")
    return size


# Options whose value comes from the command line, the environment or a config file (encordfs.config).
CONFIG_OPTIONS = (
    "domain",
    "ssh_key_file",
    "cache_dir",
    "cache_size",
    "metadata_ttl",
    "max_metadata_bytes",
    "read_only",
    "allow_other",
    "include_org_access",
    "uid",
    "gid",
    "file_mode",
    "dir_mode",
    "log_file",
    "log_format",
    "verbose",
    "metrics_port",
)


def _apply_config(args: argparse.Namespace) -> None:
    """Fill ``args`` with the merged configuration: command line > environment > --config file > defaults."""
    from encordfs import config

    merged = config.resolve({name: getattr(args, name, None) for name in CONFIG_OPTIONS}, getattr(args, "config", None))
    for name in CONFIG_OPTIONS:
        setattr(args, name, getattr(merged, name))


def cmd_mount(args: argparse.Namespace) -> int:
    _apply_config(args)
    mountpoint = check_usable(Path(args.mountpoint).expanduser())
    if not args.foreground:
        return _mount_in_background(args, mountpoint)
    _setup_logging(args.verbose, Path(args.log_file).expanduser() if args.log_file else None, args.log_format)
    return _serve(args, mountpoint)


def _serve(args: argparse.Namespace, mountpoint: Path) -> int:
    os.umask(0o077)  # the catalog, journal and cached blocks are the user's alone (files 0600, dirs 0700)
    from encordfs import fuse as bindings

    fuse = bindings.load(getattr(args, "binding", None))
    from encordfs.app import build
    from encordfs.backend.sdk import SdkBackend
    from encordfs.core.catalog import ROOT_INO

    settings = _settings(args)
    backend = SdkBackend(args.domain, _key_text(args), include_org_access=args.include_org_access)
    mount = build(backend, settings)
    metrics_server = None
    try:
        mount.fs.refresh(ROOT_INO)  # proves the key and the domain before anything is mounted
        if args.metrics_port is not None:
            metrics_server = _serve_metrics(args.metrics_port, mount)
        log.info("mounting %s at %s", args.domain, mountpoint)
        # Kernel attribute and entry timeouts follow the metadata TTL: the kernel asks again exactly
        # when the catalog would reload. Negative lookups: 5 s, so new rows appear quickly.
        timeouts = bindings.Timeouts(attr_s=settings.metadata_ttl_s, entry_s=settings.metadata_ttl_s)
        fuse.run(mount.fs, str(mountpoint), timeouts=timeouts, read_only=args.read_only, allow_other=args.allow_other)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        mount.close()
    return 0


def _serve_metrics(port: int, mount):  # type: ignore[no-untyped-def]
    from encordfs import metrics

    try:
        return metrics.serve(port, lambda: (mount.counters.snapshot(), mount.fs.status()))
    except OSError as exc:
        raise errors.FsError(f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror}") from None


def _mount_argv(args: argparse.Namespace, mountpoint: Path) -> list[str]:
    argv = [sys.executable, "-m", "encordfs", "mount", str(mountpoint), "--foreground", "--domain", args.domain]
    if args.ssh_key_file:
        argv += ["--ssh-key-file", str(Path(args.ssh_key_file).expanduser().resolve())]
    if args.cache_dir:
        argv += ["--cache-dir", str(Path(args.cache_dir).expanduser().resolve())]
    if getattr(args, "binding", None):
        argv += ["--binding", args.binding]
    for flag in ("read_only", "allow_other", "include_org_access"):
        if getattr(args, flag, False):
            argv.append("--" + flag.replace("_", "-"))
    for option in (
        "metadata_ttl",
        "cache_size",
        "max_metadata_bytes",
        "uid",
        "gid",
        "metrics_port",
        "log_file",
        "log_format",
    ):
        if getattr(args, option, None) is not None:
            value = getattr(args, option)
            argv += [
                "--" + option.replace("_", "-"),
                str(Path(value).expanduser().resolve()) if option == "log_file" else str(value),
            ]
    for option in ("file_mode", "dir_mode"):
        if getattr(args, option, None) is not None:
            argv += ["--" + option.replace("_", "-"), f"{getattr(args, option):04o}"]
    argv += ["-v"] * (args.verbose or 0)
    return argv


# glibc gives every allocation >= 128 KiB back to the kernel at free(); the read path allocates
# MiB-sized buffers per read: a fresh 1 MiB buffer per read measured 3.5x slower without these.
# Set for the mount process only; values already in the environment win.
MOUNT_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def spawn_mount(
    argv: list[str], mountpoint: Path, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a foreground mount process detached from this one; return once it serves the mount."""
    env = {**MOUNT_MALLOC_ENV, **(os.environ if env is None else env)}
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True, env=env
        )
    if wait_mounted(mountpoint, READY_TIMEOUT_S, lambda: proc.poll() is None):
        raise_read_ahead(mountpoint)
        return proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise errors.FsError(f"mount did not become ready within {READY_TIMEOUT_S:.0f} s (log: {log_path})")
    raise errors.FsError(
        _last_error(log_path) or f"mount process exited with status {proc.returncode} (log: {log_path})"
    )


def _last_error(log_path: Path) -> str | None:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines[-50:]):
        if line.startswith("encordfs: error: "):
            return line.removeprefix("encordfs: error: ")
    # Not one of our errors (a crash): the last line of the log names the exception.
    tail = [line for line in lines[-50:] if line.strip()]
    return f"mount process failed: {tail[-1].strip()[:300]} (log: {log_path})" if tail else None


def _detached_log_path(args: argparse.Namespace) -> Path:
    """Where a detached mount logs: --log-file, else CACHE_DIR/mount.log."""
    from encordfs.app import default_cache_dir

    if args.log_file:
        return Path(args.log_file).expanduser().resolve()
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir(args.domain)
    return cache_dir / "mount.log"


def _mount_in_background(args: argparse.Namespace, mountpoint: Path) -> int:
    log_path = _detached_log_path(args)
    proc = spawn_mount(_mount_argv(args, mountpoint), mountpoint, log_path)
    print(f"mounted {args.domain} at {mountpoint} (pid {proc.pid}, log {log_path})")
    return 0


def cmd_unmount(args: argparse.Namespace) -> int:
    mountpoint = Path(args.mountpoint).expanduser().resolve()
    if not mounted_at(mountpoint):
        raise errors.NotFound(f"{mountpoint} is not mounted")
    left = None
    if not args.lazy and _control(mountpoint).exists():
        ok, status = _flush(mountpoint, args.timeout)
        left = None if ok else status
    unmount(mountpoint, lazy=args.lazy)
    if left and (left.get("pending_rows") or left.get("parked")):
        print(
            f"unmounted {mountpoint}; left in the journal for the next mount: {left.get('pending_rows', 0)} row(s) pending, "
            f"{len(left.get('parked') or [])} parked",
            file=sys.stderr,
        )
    return 0


def _control(mountpoint: Path) -> Path:
    return mountpoint / ".encordfs"


def _read_status(mountpoint: Path) -> dict:  # type: ignore[type-arg]
    import json

    if not mounted_at(mountpoint):
        raise errors.NotFound(f"{mountpoint} is not an encordfs mount")
    try:
        status: dict = json.loads((_control(mountpoint) / "status.json").read_text())  # type: ignore[type-arg]
    except (OSError, ValueError) as exc:
        raise errors.FsError(f"cannot read {mountpoint}/.encordfs/status.json: {exc}") from None
    return status


def _flush(mountpoint: Path, timeout_s: float) -> tuple[bool, dict]:  # type: ignore[type-arg]
    """Kick the mount's write queue and poll its status until nothing is pending or time is up."""
    try:
        os.setxattr(_control(mountpoint), "user.encordfs.flush", str(timeout_s).encode())
    except OSError as exc:
        raise errors.FsError(f"cannot reach the mount's write queue: {os.strerror(exc.errno or 5)}") from None
    deadline = time.monotonic() + timeout_s
    while True:
        writes = _read_status(mountpoint).get("writes") or {}
        if not writes.get("pending_rows"):
            return True, writes
        if time.monotonic() >= deadline:
            return False, writes
        time.sleep(0.1)


def _describe_writes(w: dict) -> list[str]:  # type: ignore[type-arg]
    lines = [
        f"pending: {w.get('pending_rows', 0)} row(s), {w.get('pending_ops', 0)} edit(s), oldest {w.get('oldest_pending_age_s', 0):.1f} s",
        f"pushed: {w.get('pushed_rows_total', 0)} row(s) in {w.get('push_calls_total', 0)} call(s)",
    ]
    for p in w.get("parked") or []:
        lines.append(f"parked: {p.get('title') or p.get('row')}: {p.get('reason')}")
    if w.get("last_error"):
        lines.append(f"last error: {w['last_error']}")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    import json

    mountpoint = Path(args.mountpoint).expanduser().resolve()
    status = _read_status(mountpoint)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print(
        f"{mountpoint}: encordfs, {'read-only' if status.get('read_only') else 'read-write'}, {status.get('open_handles', 0)} open file(s)"
    )
    if status.get("writes"):
        print("\n".join(_describe_writes(status["writes"])))
    counters = status.get("counters") or {}
    if counters:
        print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    mountpoint = Path(args.mountpoint).expanduser().resolve()
    ok, writes = _flush(mountpoint, args.timeout)
    if ok and not writes.get("parked"):
        print(f"{mountpoint}: every queued change has landed")
        return 0
    print("\n".join(_describe_writes(writes)), file=sys.stderr)
    return EXIT_ERROR


def cmd_prefetch(args: argparse.Namespace) -> int:
    """Warm the mount's caches by reading every file under the given paths through the mount.

    Reading through the mount is what fills the block cache (memory and disk), so a later epoch is
    served locally; bytes go to no one. Progress (files, bytes, rate, ETA) is drawn on stderr.
    """
    from concurrent.futures import ThreadPoolExecutor

    if args.jobs < 1:
        raise errors.InvalidValue(f"--jobs must be at least 1, not {args.jobs}")
    files: list[tuple[Path, int]] = []
    for path in args.paths:
        root = Path(path).expanduser()
        if not root.exists():
            raise errors.NotFound(f"{root} does not exist")
        if root.is_file():
            files.append((root, root.stat().st_size))
            continue
        for dirpath, _, names in os.walk(root):
            for name in names:
                p = Path(dirpath) / name
                files.append((p, p.stat().st_size))
    total = sum(size for _, size in files)
    done_files = done_bytes = failed = 0
    lock = threading.Lock()
    started = time.monotonic()

    def read(item: tuple[Path, int]) -> None:
        nonlocal done_files, done_bytes, failed
        got = 0
        try:
            with open(item[0], "rb", buffering=0) as f:
                while chunk := f.read(1 << 20):
                    got += len(chunk)
        except OSError as exc:
            log.warning("prefetch: %s: %s", item[0], os.strerror(exc.errno or 5))
            with lock:
                failed += 1
        with lock:
            done_files += 1
            done_bytes += got

    def show(final: bool = False) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = done_bytes / elapsed
        eta = (total - done_bytes) / rate if rate > 0 else 0.0
        line = (
            f"\rprefetch: {done_files}/{len(files)} files, {done_bytes / 1e6:.1f}/{total / 1e6:.1f} MB, "
            f"{rate / 1e6:.1f} MB/s, ETA {eta:.0f} s"
        )
        if not args.quiet:
            print(line + ("\n" if final else ""), end="", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        pending = [pool.submit(read, item) for item in files]
        while any(not f.done() for f in pending):
            show()
            time.sleep(0.5)
    show(final=True)
    if failed:
        raise errors.RemoteIOError(f"{failed} of {len(files)} file(s) could not be read (see the log)")
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    for path in args.paths:
        target = Path(path).expanduser().resolve()
        try:
            os.setxattr(target, "user.encordfs.refresh", b"1")
        except OSError as exc:
            raise errors.FsError(f"cannot refresh {target}: {os.strerror(exc.errno or 5)}") from None
    return 0


# -- demo ----------------------------------------------------------------------------------------


def _start_emulator(data_dir: Path, extra: list[str]) -> tuple[subprocess.Popen[str], str, str]:
    from encordfs.emulator import launch

    try:
        launched = launch.start(data_dir, ["--sample", *extra], new_session=True)
    except launch.NotReady as exc:
        raise errors.FsError(f"{exc} (see the messages above)") from None
    return launched.proc, launched.domain, str(launched.key_file or data_dir / "demo_ed25519")


def cmd_demo(args: argparse.Namespace) -> int:
    mountpoint = Path(args.mountpoint).expanduser()
    mountpoint.mkdir(parents=True, exist_ok=True)
    mountpoint = check_usable(mountpoint)
    data_dir = Path(args.data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    print(f"starting the Encord emulator with a sample workspace in {data_dir} ...", flush=True)
    emulator, domain, key_file = _start_emulator(data_dir, [])
    mount_proc = None
    try:
        mount_args = argparse.Namespace(
            domain=domain,
            ssh_key_file=key_file,
            cache_dir=str(data_dir / "mount-cache"),
            read_only=False,
            allow_other=False,
            include_org_access=False,
            verbose=args.verbose,
        )
        mount_proc = spawn_mount(_mount_argv(mount_args, mountpoint), mountpoint, data_dir / "mount.log")
        print(_demo_banner(mountpoint, domain, key_file), flush=True)
        _wait_for_signal(lambda: mount_proc is not None and mount_proc.poll() is None and emulator.poll() is None)
    finally:
        print("\nunmounting ...", flush=True)
        if mounted_at(mountpoint):
            try:
                unmount(mountpoint)
            except errors.FsError:
                unmount(mountpoint, lazy=True)
        for proc in (mount_proc, emulator):
            if proc is not None and proc.poll() is None:
                if proc is emulator:
                    proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return 0


def _wait_for_signal(alive) -> None:  # type: ignore[no-untyped-def]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set() and alive():
        stop.wait(0.5)


def _demo_banner(mountpoint: Path, domain: str, key_file: str) -> str:
    return f"""
encordfs demo: the sample workspace is mounted at {mountpoint}
  (emulator at {domain}, key {key_file})

Try, in another terminal:
  ls -l {mountpoint}
  ls -l {mountpoint}/street-scenes | head
  find {mountpoint} -type f | head
  getfattr -d -m - "$(find {mountpoint} -name '*.jpg' | head -1)"
  getfattr -n user.encord.client_metadata --only-values "$(find {mountpoint} -name '*.jpg' | head -1)"
  find {mountpoint} -type f -exec sha256sum {{}} + | head
  {sys.executable} -c "import glob, PIL.Image as I; print(I.open(glob.glob('{mountpoint}/street-scenes/*.jpg')[0]).size)"
  setfattr -n user.encord.meta.split -v '"\\"val\\""' "$(find {mountpoint} -name '*.jpg' | head -1)"
  {sys.executable} -m encordfs status {mountpoint}

Press Ctrl-C to unmount and stop the emulator."""


# -- emulator ------------------------------------------------------------------------------------


def cmd_emulator(args: argparse.Namespace) -> int:
    from encordfs.emulator import cli as emulator_cli

    return int(emulator_cli.run(args))


# -- parser --------------------------------------------------------------------------------------


def _add_mount_options(p: argparse.ArgumentParser) -> None:
    # Defaults are None ("not given") so that encordfs.config can merge the environment and --config under them.
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="TOML file of options (default: $ENCORDFS_CONFIG); command line > environment > file",
    )
    p.add_argument("--domain", default=None, help=f"Encord API domain (default $ENCORDFS_DOMAIN or {DEFAULT_DOMAIN})")
    p.add_argument(
        "--ssh-key-file", help="OpenSSH Ed25519 private key registered with Encord (default: $ENCORD_SSH_KEY_FILE)"
    )
    p.add_argument(
        "--cache-dir", help="where the catalog and disk cache live (default: ~/.cache/encordfs/<domain hash>)"
    )
    p.add_argument("--read-only", action="store_true", default=None, help="mount read-only (no metadata writes)")
    p.add_argument(
        "--allow-other",
        action="store_true",
        default=None,
        help="let other users see the mount (adds default_permissions)",
    )
    p.add_argument(
        "--include-org-access",
        action="store_true",
        default=None,
        help="also show datasets the key sees through its organisation",
    )
    p.add_argument("--metadata-ttl", default=None, help="minimal | SECONDS | indefinite (default 60)")
    p.add_argument("--cache-size", default=None, help="disk cache cap, e.g. 10G (default 10G)")
    p.add_argument(
        "--max-metadata-bytes", type=int, default=None, help="refuse client metadata larger than this (default 65536)"
    )
    p.add_argument("--uid", type=int, default=None, help="owner shown for every file (default: the mounting user)")
    p.add_argument("--gid", type=int, default=None, help="group shown for every file (default: the mounting user's)")
    p.add_argument("--file-mode", default=None, help="permission bits of files, octal (default 0444)")
    p.add_argument("--dir-mode", default=None, help="permission bits of folders, octal (default 0555)")
    p.add_argument(
        "--log-file", default=None, help="log here (default: stderr in the foreground, CACHE_DIR/mount.log detached)"
    )
    p.add_argument("--log-format", choices=("text", "json"), default=None, help="log lines as text (default) or JSON")
    p.add_argument(
        "--metrics-port", type=int, default=None, metavar="PORT", help="serve Prometheus /metrics on 127.0.0.1:PORT"
    )
    p.add_argument("-v", "--verbose", action="count", default=None, help="-v info, -vv debug")
    p.add_argument(
        "--binding",
        choices=("kernel", "mfusepy"),
        default=None,
        help="FUSE binding: mfusepy (default; libfuse 3) or kernel (speaks /dev/fuse itself, passthrough)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encordfs", description="Encord datasets as a local filesystem.")
    parser.add_argument("--version", action="version", version=f"encordfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("mount", help="mount Encord at MOUNTPOINT")
    p.add_argument("mountpoint")
    detach = p.add_mutually_exclusive_group()
    detach.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground until unmounted")
    detach.add_argument(
        "--daemon", action="store_true", help="detach once the mount is ready, logging to --log-file (the default)"
    )
    _add_mount_options(p)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("unmount", help="unmount an encordfs mount (after flushing queued changes)", aliases=["umount"])
    p.add_argument("mountpoint")
    p.add_argument("--lazy", action="store_true", help="detach now even if busy")
    p.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for queued changes (default %(default)s)"
    )
    p.set_defaults(func=cmd_unmount)

    p = sub.add_parser("status", help="show a mount's write queue and counters")
    p.add_argument("mountpoint")
    p.add_argument("--json", action="store_true", help="print the raw status JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("flush", help="push queued metadata changes now; exit 0 when none is left")
    p.add_argument("mountpoint")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default %(default)s)")
    p.set_defaults(func=cmd_flush)

    p = sub.add_parser("prefetch", help="warm the cache for datasets or folders of a mount (progress on stderr)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-j", "--jobs", type=int, default=8, help="parallel readers (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_prefetch)

    p = sub.add_parser("refresh", help="reload folders from Encord now, whatever their age")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser("demo", help="start the emulator with a sample workspace and mount it")
    p.add_argument("mountpoint", nargs="?", default="/tmp/encordfs-demo")
    p.add_argument(
        "--data-dir",
        default=str(Path.home() / ".cache" / "encordfs" / "demo"),
        help="emulator state (default %(default)s)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("emulator", help="run the local Encord emulator")
    from encordfs.emulator import cli as emulator_cli

    emulator_cli.add_arguments(p)
    p.set_defaults(func=cmd_emulator)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except errors.FsError as exc:
        print(f"encordfs: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except OSError as exc:  # a path or resource the user named was refused (a log file's folder, ...)
        log.debug("OSError reached main", exc_info=True)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"encordfs: error: {where}{exc.strerror or exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
