"""The ``encordfs`` command: mount, unmount, status, flush, refresh, prefetch, hints, cp, demo, emulator.

Every user mistake ends as one line on stderr (``encordfs: error: ...``) and a non-zero exit: ``main``
turns ``errors.FsError`` (and an ``OSError`` about a path the user named) into that line, so no
traceback reaches a user for bad input. Exit 2 is for usage errors (argparse's, and a path that is not
an encordfs mount). Secrets never appear in output: URLs are shown without their query, keys only by
path.

Options of ``mount`` are generated from ``encordfs.settings.Settings`` (one definition of each option,
its default and its help), and so are ``cp``'s connection and cache options (``CP_OPTIONS``); everything
that talks to a running mount goes through ``encordfs.control``.
Heavy imports (the SDK, the core, the emulator) happen inside the subcommand that needs them, so
``encordfs mount --help`` or ``encordfs status`` load neither.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from encordfs import __version__, control, errors, options

if TYPE_CHECKING:
    from encordfs.settings import Settings

log = logging.getLogger("encordfs")

EXIT_ERROR = 1
EXIT_USAGE = 2
# The options of ``mount`` that ``cp`` takes too: how to reach Encord, where to cache, what to log.
CP_OPTIONS = (
    "domain", "ssh_key_file", "cache_dir", "cache_size", "metadata_ttl", "include_org_access",
    "http_client", "ca_file", "log_file", "log_format", "verbose",
)  # fmt: skip


def _say(*parts: Any, file: Any = None) -> None:
    """print() that survives a closed stdout/stderr (``encordfs demo | tee log`` then Ctrl-C):
    cleanup must never die on a broken pipe."""
    try:
        print(*parts, file=file or sys.stdout, flush=True)
    except (OSError, ValueError):
        pass


# -- mount ---------------------------------------------------------------------------------------


def _given(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in options.NAMES}


def _key_file_warning(path: str | None) -> str | None:
    if not path:
        return None
    try:
        if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            return f"SSH key file {path} is readable by other users; chmod 600 it"
    except OSError:
        pass
    return None


def _key_text(s: Settings) -> str:
    from encordfs.backend.sdk import load_key

    if s.ssh_key_file:
        return load_key(Path(s.ssh_key_file))
    text = os.environ.get("ENCORD_SSH_KEY")
    if text:
        return text
    raise errors.AuthError("no SSH key: pass --ssh-key-file FILE or set ENCORD_SSH_KEY_FILE")


def cmd_mount(args: argparse.Namespace) -> int:
    from encordfs import settings as settings_mod

    s = settings_mod.resolve(_given(args), args.config)
    mountpoint = control.check_mountpoint(args.mountpoint, s)
    warning = _key_file_warning(s.ssh_key_file)
    if warning:
        _say(f"encordfs: warning: {warning}", file=sys.stderr)
    if not args.foreground:
        log_path = s.detached_log_path()
        proc = control.spawn(s, mountpoint, log_path)
        _say(f"mounted {s.domain} at {mountpoint} (pid {proc.pid}, log {log_path})")
        return 0
    from encordfs import logs

    logs.setup(s.verbose, Path(s.log_file) if s.log_file else None, s.log_format)
    if warning:
        log.warning("%s", warning)
    return serve(s, mountpoint)


def serve(s: Settings, mountpoint: Path) -> int:
    """Build the mount, prove the key and domain, register the control socket, serve until unmounted."""
    os.umask(0o077)  # the catalog, journal and cache are the user's alone (files 0600, dirs 0700)
    # The encord SDK imports numpy, whose OpenBLAS starts a thread per core that spins after start-up
    # (~0.1 s of CPU each, measured in a mount's profile); the mount does no linear algebra.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from encordfs import fuse as bindings
    from encordfs.app import build, settle_heap
    from encordfs.backend.sdk import SdkBackend
    from encordfs.core.catalog import ROOT_INO

    binding = bindings.load(s.binding)
    if s.ca_file:
        # The encord SDK makes a requests session per call, with no hook for ``verify``; requests reads
        # this variable for every one of them (it wins over CURL_CA_BUNDLE and certifi).
        os.environ["REQUESTS_CA_BUNDLE"] = s.ca_file
    backend = SdkBackend(
        s.domain, _key_text(s), include_org_access=s.include_org_access, read_timeout_s=s.api_timeout_s
    )
    mount = build(backend, s, mountpoint, account_id=backend.account_id)
    server = metrics_server = None
    try:
        # Proves the key and the domain before anything is mounted (in cluster mode a fresh listing that
        # another node of this account published will do: its namespace is the key's).
        mount.fs.refresh(ROOT_INO, force=False)
        server = control.Server(mountpoint, mount.cache_dir, s.read_only, mount.control_handlers())
        if s.metrics_port is not None:
            metrics_server = _serve_metrics(s.metrics_port, mount)
        log.info("mounting %s at %s (binding %s)", s.domain, mountpoint, s.binding)
        timeouts = bindings.Timeouts(attr_s=s.metadata_ttl, entry_s=s.metadata_ttl)
        flags = bindings.MountFlags(read_only=s.read_only, allow_other=s.allow_other, passthrough=s.passthrough)
        settle_heap()
        binding.run(mount.fs, str(mountpoint), timeouts=timeouts, flags=flags)
        log.info("unmounted %s", mountpoint)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        mount.close()
        if server is not None:
            server.close()  # last: "unregistered" means the cache dir is free
    return 0


def _serve_metrics(port: int, mount: Any) -> Any:
    from encordfs import metrics

    try:
        return metrics.serve(port, lambda: (mount.counters.snapshot(), mount.fs.status()))
    except OSError as exc:
        raise errors.FsError(f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror}") from None


# -- talking to a mount ----------------------------------------------------------------------------


def cmd_unmount(args: argparse.Namespace) -> int:
    if args.timeout < 0:
        raise errors.InvalidValue("--timeout must not be negative")
    done = control.unmount(args.mountpoint, timeout_s=args.timeout, lazy=args.lazy)
    for note in done.notes:
        _say(f"encordfs: {note}", file=sys.stderr)
    if done.pending_rows or done.parked_rows:
        _say(
            f"unmounted {control.canonical(args.mountpoint)}; left in the journal for the next mount: "
            f"{done.pending_rows} row(s) pending, {done.parked_rows} parked",
            file=sys.stderr,
        )
    return 0


def _describe_writes(w: dict[str, Any]) -> list[str]:
    lines = [
        f"pending: {w.get('pending_rows', 0)} row(s), {w.get('pending_ops', 0)} edit(s), "
        f"oldest {w.get('oldest_pending_age_s', 0):.1f} s",
        f"pushed: {w.get('pushed_rows_total', 0)} row(s) in {w.get('push_calls_total', 0)} call(s)",
    ]
    for p in w.get("parked") or []:
        lines.append(f"parked: {p.get('title') or p.get('row')}: {p.get('reason')}")
    if w.get("last_error"):
        lines.append(f"last error: {w['last_error']}")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    import json

    status = control.status(args.mountpoint, timeout_s=args.timeout)
    if args.json:
        _say(json.dumps(status, indent=2, sort_keys=True))
        return 0
    mode = "read-only" if status.get("read_only") else "read-write"
    _say(f"{control.canonical(args.mountpoint)}: encordfs, {mode}, {status.get('open_handles', 0)} open file(s)")
    if (passthrough := status.get("passthrough")) is not None:
        _say(_describe_passthrough(status.get("binding", "?"), passthrough))
    if status.get("writes"):
        _say("\n".join(_describe_writes(status["writes"])))
    for handle, reason in (status.get("sign_refusals") or {}).items():
        _say(f"not readable: {handle}: {reason}")
    shared = status.get("shared")
    if shared:
        state = "up" if shared.get("up") else "down: carrying on against Encord directly"
        _say(f"shared: {shared.get('redis')} ({state}){', blocks too' if shared.get('blocks') else ''}")
    counters = status.get("counters") or {}
    if counters:
        _say("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    return 0


def _describe_passthrough(binding: str, p: dict[str, Any]) -> str:
    if p.get("enabled"):
        return (
            f"passthrough: on ({binding} binding): {p.get('opens', 0)} open(s) read by the kernel itself, "
            f"{p.get('backing_ids', 0)} cache file(s) registered"
        )
    return f"passthrough: off ({binding} binding): {p.get('off', 'off')}"


def cmd_flush(args: argparse.Namespace) -> int:
    ok, writes = control.flush(args.mountpoint, args.timeout)
    if ok and not writes.get("parked"):
        _say(f"{control.canonical(args.mountpoint)}: every queued change has landed")
        return 0
    _say("\n".join(_describe_writes(writes)), file=sys.stderr)
    return EXIT_ERROR


def cmd_refresh(args: argparse.Namespace) -> int:
    for path in args.paths:
        control.refresh(path)
    return 0


def cmd_hints(args: argparse.Namespace) -> int:
    """Order hints from a file or stdin (one path per line), through the mount's control socket: the
    same as writing ``MOUNTPOINT/.encordfs/hints``, and it works on read-only mounts too."""
    info = control.find(args.mountpoint)
    if info is None:
        raise control.NotAMount(f"{control.canonical(args.mountpoint)} is not inside an encordfs mount")
    source = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    with source:
        lines = [line.rstrip(b"\r\n").decode("utf-8", "surrogateescape") for line in source]
    sent = control.hints(info.mountpoint, [line for line in lines if line])
    if not args.quiet:
        _say(f"{info.mountpoint}: {sent} path(s) hinted" + ("" if sent else " (hints cleared)"), file=sys.stderr)
    return 0


def cmd_prefetch(args: argparse.Namespace) -> int:
    """Warm the mount's caches by reading every file under the given paths through the mount.

    Reading through the mount is what fills the cache (memory and disk), so a later epoch is served
    locally; bytes go to no one. Progress (files, bytes, rate, ETA) is drawn on stderr.
    """
    from concurrent.futures import ThreadPoolExecutor

    if args.jobs < 1:
        raise errors.InvalidValue(f"--jobs must be at least 1, not {args.jobs}")
    for path in args.paths:
        if control.find(path) is None:
            raise control.NotAMount(f"{control.canonical(path)} is not inside an encordfs mount")
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
            try:
                print(line + ("\n" if final else ""), end="", file=sys.stderr, flush=True)
            except (OSError, ValueError):
                pass

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        pending = [pool.submit(read, item) for item in files]
        while any(not f.done() for f in pending):
            show()
            time.sleep(0.5)
    show(final=True)
    if failed:
        raise errors.RemoteIOError(f"{failed} of {len(files)} file(s) could not be read (see the log)")
    return 0


# -- cp ------------------------------------------------------------------------------------------


def cmd_cp(args: argparse.Namespace) -> int:
    """Copy rows to local files through the core, without a mount (``encordfs.copy``)."""
    from encordfs import copy, logs, standalone
    from encordfs import settings as settings_mod

    s = settings_mod.resolve(_given(args), args.config)
    if "cache_size" not in s.model_fields_set:
        # A copy reads each byte once: caching it on disk too would write everything twice.
        s = s.model_copy(update={"cache_size": 0})
    if "prefetch" not in s.model_fields_set:
        # Its threads are its prefetch (``encordfs.copy``: files in flight); the core's would fetch
        # files that another of the copy's processes takes.
        s = s.model_copy(update={"prefetch": False})
    logs.setup(s.verbose, Path(s.log_file) if s.log_file else None, s.log_format)
    warning = _key_file_warning(s.ssh_key_file)
    if warning:
        _say(f"encordfs: warning: {warning}", file=sys.stderr)
    import encordfs.backend.sdk  # noqa: F401  (imported once here, before helper processes fork)

    processes = copy.default_processes() if args.processes is None else args.processes
    return copy.main(
        lambda: standalone.open_core(s, "cp"),
        args.sources,
        Path(args.dest).expanduser(),
        metadata=args.metadata,
        jobs=args.jobs,
        processes=processes,
        quiet=args.quiet,
    )


# -- demo ----------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    import subprocess

    launch = _emulator_module("launch")
    mountpoint = Path(args.mountpoint).expanduser()
    from encordfs import settings as settings_mod

    mountpoint.mkdir(parents=True, exist_ok=True)
    data_dir = Path(args.data_dir).expanduser().resolve()
    s = settings_mod.resolve({"cache_dir": str(data_dir / "mount-cache"), "verbose": args.verbose})
    mountpoint = control.check_mountpoint(mountpoint, s)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _say(f"starting the Encord emulator with a sample workspace in {data_dir} ...")
    try:
        launched = launch.start(data_dir, ["--sample"], new_session=True)
    except launch.NotReady as exc:
        raise errors.FsError(f"{exc} (see the messages above)") from None
    emulator = launched.proc
    key_file = str(launched.key_file or data_dir / "demo_ed25519")
    mount_proc = None
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        s = settings_mod.resolve({"domain": launched.domain, "ssh_key_file": key_file, "cache_dir": s.cache_dir,
                                  "verbose": args.verbose})  # fmt: skip
        mount_proc = control.spawn(s, mountpoint, data_dir / "mount.log")
        _say(_demo_banner(mountpoint, launched.domain, key_file))
        while not stop.is_set() and mount_proc.poll() is None and emulator.poll() is None:
            stop.wait(0.5)
    finally:
        # Cleanup runs whatever stdout does (a closed pipe) and however we got here.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _say("\nunmounting ...")
        if control.find(mountpoint, exact=True) is not None:
            try:
                control.unmount(mountpoint, timeout_s=10.0)
            except errors.FsError:
                control.detach(mountpoint, lazy=True)
        for proc in (mount_proc, emulator):
            if proc is not None and proc.poll() is None:
                if proc is emulator:
                    proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


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


def _emulator_module(name: str) -> Any:
    """``encordfs.emulator.<name>``, imported only when a subcommand needs the emulator."""
    import importlib

    try:
        return importlib.import_module(f"encordfs.emulator.{name}")
    except ImportError as exc:
        raise errors.FsError(
            f"the emulator needs its optional dependencies ({exc.name or exc}): pip install 'encordfs[emulator]'"
        ) from None


def cmd_emulator(args: argparse.Namespace) -> int:
    return int(_emulator_module("cli").main(args.emulator_args))


# -- parser --------------------------------------------------------------------------------------


def _add_mount_options(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    # Defaults are None ("not given") so that the environment and --config can fill them (settings.resolve).
    p.add_argument(
        "--config", default=None, metavar="FILE", help="TOML file of options (default: $ENCORDFS_CONFIG); "
        "command line > environment > file"
    )  # fmt: skip
    for option in options.OPTIONS:
        if only is not None and option.name not in only:
            continue
        if option.count:
            p.add_argument("-v", "--verbose", action="count", default=None, help=option.help)
        elif option.is_flag:
            p.add_argument(option.flag, dest=option.name, action="store_false" if option.default else "store_true",
                           default=None, help=option.off_help or option.help)  # fmt: skip
        else:
            shown = option.default_text
            suffix = f" (default {shown})" if shown is not None else ""
            p.add_argument(option.flag, dest=option.name, default=None, metavar=option.metavar,
                           choices=option.choices, help=option.help + suffix)  # fmt: skip


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
        "--timeout",
        type=float,
        default=10.0,
        help="seconds for queued changes and the process to end (default %(default)s)",
    )
    p.set_defaults(func=cmd_unmount)

    p = sub.add_parser("status", help="show a mount's write queue and counters")
    p.add_argument("mountpoint")
    p.add_argument("--json", action="store_true", help="print the raw status JSON")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer (default %(default)s)")
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

    p = sub.add_parser(
        "cp",
        help="copy datasets, folders, views or files to a local folder (no mount needed; resumable)",
        description="Copy rows as files through the same core a mount uses. Each SOURCE lands in "
        "DEST/<its name> (encord:// alone: every dataset, in DEST). Rerun the same command to resume.",
    )
    p.add_argument("sources", nargs="+", metavar="[encord://]DATASET[/PATH]")
    p.add_argument("dest", metavar="DEST")
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=None,
        help="files copied at once (default: 8, and more while the link's first-byte latency keeps them waiting)",
    )
    p.add_argument(
        "--metadata",
        choices=("xattr", "sidecar", "none"),
        default="none",
        help="none: bytes only (default, as cp and rsync); xattr: the mount's user.encord.* xattrs on each "
        "copy; sidecar: NAME.metadata.json beside each row, the emulator's --import format",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        metavar="P",
        help="processes sharing the -j copies (default: one per CPU, at most 4; a copy of small files is "
        "bound by Python, not the network)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, only the summary")
    _add_mount_options(p, CP_OPTIONS)
    p.set_defaults(func=cmd_cp, cache_size=None)

    p = sub.add_parser("hints", help="announce the order files will be read in (paths, one per line)")
    p.add_argument("mountpoint")
    p.add_argument("file", nargs="?", default="-", help="paths, one per line (default: stdin)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_hints)

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

    # Listed here for ``encordfs --help`` only: ``main`` hands ``encordfs emulator ...`` to the emulator's parser.
    sub.add_parser("emulator", help="run the local Encord emulator (encordfs emulator --help)", add_help=False)
    return parser


def _exit_code(exc: errors.FsError) -> int:
    return EXIT_USAGE if isinstance(exc, control.NotAMount) else EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["emulator"]:
        # Everything after the word is the emulator's own (``--help`` too): argparse's REMAINDER in a
        # subparser refuses a first argument that starts with "-" ("unrecognized arguments: --sample").
        args = argparse.Namespace(func=cmd_emulator, emulator_args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args))
    except errors.FsError as exc:
        _say(f"encordfs: error: {exc}", file=sys.stderr)
        return _exit_code(exc)
    except OSError as exc:  # a path or resource the user named was refused (a log file's folder, ...)
        log.debug("OSError reached main", exc_info=True)
        where = f"{exc.filename}: " if exc.filename else ""
        _say(f"encordfs: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
