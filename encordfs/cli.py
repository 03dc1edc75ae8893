"""The ``encordfs`` command: mount, unmount, demo, emulator.

Every user mistake ends as one line on stderr (``encordfs: error: ...``) and a non-zero exit: the
``main`` wrapper turns ``errors.FsError`` into that line, so no traceback reaches a user for bad
input. Secrets never appear in output: URLs are shown without their query, keys only by path.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from encordfs import __version__, errors
from encordfs.mountpoint import check_usable, mounted_at, unmount, wait_mounted

log = logging.getLogger("encordfs")

EXIT_ERROR = 1
EXIT_USAGE = 2
DEFAULT_DOMAIN = "https://api.encord.com"
READY_TIMEOUT_S = 60.0


def _setup_logging(verbosity: int, log_file: Path | None = None) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # HTTP client libraries log full request URLs (signed URLs included) at INFO/DEBUG: never let them.
    # urllib3 warns about each retry it makes for the SDK: the SDK's final error is what we report.
    for noisy in ("httpx", "httpcore", "urllib3", "requests", "encord"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("mfusepy").setLevel(logging.ERROR if verbosity < 2 else logging.WARNING)


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

    s = Settings(domain=args.domain)
    if args.cache_dir:
        s.cache_dir = Path(args.cache_dir).expanduser().resolve()
    return s


def cmd_mount(args: argparse.Namespace) -> int:
    mountpoint = check_usable(Path(args.mountpoint).expanduser())
    if not args.foreground:
        return _mount_in_background(args, mountpoint)
    _setup_logging(args.verbose)
    return _serve(args, mountpoint)


def _serve(args: argparse.Namespace, mountpoint: Path) -> int:
    from encordfs import fuse
    from encordfs.app import build
    from encordfs.backend.sdk import SdkBackend
    from encordfs.core.catalog import ROOT_INO

    settings = _settings(args)
    backend = SdkBackend(args.domain, _key_text(args), include_org_access=args.include_org_access)
    mount = build(backend, settings)
    try:
        mount.fs.refresh(ROOT_INO)  # proves the key and the domain before anything is mounted
        log.info("mounting %s at %s", args.domain, mountpoint)
        fuse.run(mount.fs, str(mountpoint), read_only=args.read_only, allow_other=args.allow_other, attr_timeout_s=settings.metadata_ttl_s, entry_timeout_s=settings.metadata_ttl_s)
    finally:
        mount.close()
    return 0


def _mount_argv(args: argparse.Namespace, mountpoint: Path) -> list[str]:
    argv = [sys.executable, "-m", "encordfs", "mount", str(mountpoint), "--foreground", "--domain", args.domain]
    if args.ssh_key_file:
        argv += ["--ssh-key-file", str(Path(args.ssh_key_file).expanduser().resolve())]
    if args.cache_dir:
        argv += ["--cache-dir", str(Path(args.cache_dir).expanduser().resolve())]
    for flag in ("read_only", "allow_other", "include_org_access"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    argv += ["-v"] * args.verbose
    return argv


def spawn_mount(argv: list[str], mountpoint: Path, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a foreground mount process detached from this one; return once it serves the mount."""
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True, env=env)
    if wait_mounted(mountpoint, READY_TIMEOUT_S, lambda: proc.poll() is None):
        return proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise errors.FsError(f"mount did not become ready within {READY_TIMEOUT_S:.0f} s (log: {log_path})")
    raise errors.FsError(_last_error(log_path) or f"mount process exited with status {proc.returncode} (log: {log_path})")


def _last_error(log_path: Path) -> str | None:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines[-50:]):
        if line.startswith("encordfs: error: "):
            return line.removeprefix("encordfs: error: ")
    return None


def _mount_in_background(args: argparse.Namespace, mountpoint: Path) -> int:
    from encordfs.app import default_cache_dir

    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir(args.domain)
    log_path = cache_dir / "mount.log"
    proc = spawn_mount(_mount_argv(args, mountpoint), mountpoint, log_path)
    print(f"mounted {args.domain} at {mountpoint} (pid {proc.pid}, log {log_path})")
    return 0


def cmd_unmount(args: argparse.Namespace) -> int:
    unmount(Path(args.mountpoint).expanduser().resolve(), lazy=args.lazy)
    return 0


# -- demo ----------------------------------------------------------------------------------------


def _start_emulator(data_dir: Path, extra: list[str]) -> tuple[subprocess.Popen[str], str, str]:
    argv = [sys.executable, "-m", "encordfs.emulator", "--data-dir", str(data_dir), "--sample", *extra]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None, text=True, start_new_session=True)
    assert proc.stdout is not None
    found: dict[str, str] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            key, _, value = line.strip().partition("=")
            if key in ("domain", "ssh_key_file"):
                found[key] = value
            if key == "domain":
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(120)
    if "domain" not in found:
        proc.kill()
        proc.wait()
        raise errors.FsError("the emulator did not start (see the messages above)")
    key = found.get("ssh_key_file") or str(data_dir / "demo_ed25519")
    return proc, found["domain"], key


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
        mount_args = argparse.Namespace(domain=domain, ssh_key_file=key_file, cache_dir=str(data_dir / "mount-cache"), read_only=False, allow_other=False, include_org_access=False, verbose=args.verbose)
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
  python3 -c "from PIL import Image; print(Image.open('$(echo {mountpoint})/street-scenes/' + __import__('os').listdir('{mountpoint}/street-scenes')[0]).size)"

Press Ctrl-C to unmount and stop the emulator."""


# -- emulator ------------------------------------------------------------------------------------


def cmd_emulator(args: argparse.Namespace) -> int:
    from encordfs.emulator import cli as emulator_cli

    return int(emulator_cli.run(args))


# -- parser --------------------------------------------------------------------------------------


def _add_mount_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", default=os.environ.get("ENCORDFS_DOMAIN", DEFAULT_DOMAIN), help="Encord API domain (default %(default)s)")
    p.add_argument("--ssh-key-file", help="OpenSSH Ed25519 private key registered with Encord (default: $ENCORD_SSH_KEY_FILE)")
    p.add_argument("--cache-dir", help="where the catalog and block cache live (default: ~/.cache/encordfs/<domain hash>)")
    p.add_argument("--read-only", action="store_true", help="mount read-only (no metadata writes)")
    p.add_argument("--allow-other", action="store_true", help="let other users see the mount (adds default_permissions)")
    p.add_argument("--include-org-access", action="store_true", help="also show datasets the key sees through its organisation")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encordfs", description="Encord datasets as a local filesystem.")
    parser.add_argument("--version", action="version", version=f"encordfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("mount", help="mount Encord at MOUNTPOINT")
    p.add_argument("mountpoint")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground until unmounted")
    _add_mount_options(p)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("unmount", help="unmount an encordfs mount", aliases=["umount"])
    p.add_argument("mountpoint")
    p.add_argument("--lazy", action="store_true", help="detach now even if busy")
    p.set_defaults(func=cmd_unmount)

    p = sub.add_parser("demo", help="start the emulator with a sample workspace and mount it")
    p.add_argument("mountpoint", nargs="?", default="/tmp/encordfs-demo")
    p.add_argument("--data-dir", default=str(Path.home() / ".cache" / "encordfs" / "demo"), help="emulator state (default %(default)s)")
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
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
