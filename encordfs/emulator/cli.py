"""Command line of the emulator: ``encordfs emulator`` and ``python -m encordfs.emulator``.

Contract (scripts outside the project rely on it):

* stdout carries exactly the ready lines, flushed: ``ssh_key_file=PATH`` (only when the demo key
  is in use) and then ``domain=http://HOST:PORT``. Logs go to stderr.
* SIGTERM / SIGINT → clean shutdown, exit 0.
* Bad input (missing import dir, unreadable key file, port in use) → one line on stderr, exit 2,
  no traceback.

``--data-dir`` defaults to a fresh temporary directory that is deleted at exit; pass one to keep
state across restarts. Imports are idempotent per (source, dataset title): ``--import DIR`` of an
already-imported dir, or ``--sample`` on a data dir that has the sample, imports nothing new; nor does
``--generate TITLE:ROWS[:BYTES]`` for a title it generated before (``emulator.synthetic``: ROWS IMAGE
rows whose BYTES-byte blobs are generated on the fly, never stored).

Shape: ``--shape recorded`` serves the same data the way payloads recorded from the real service look
(rows without a storage item, float sizes, ``image/jpg``, sequences as one MP4, other date forms, legacy
errors on HTTP 400; ``emulator.shapes``, ``docs/RECORDED-SHAPES.md``); ``--shape default`` (the default)
is the emulator's reading of the SDK.

Faults: ``--fault RULE_JSON`` (repeatable) installs rules as if posted to ``/_emulator/faults`` and
``--clock-skew SECONDS`` sets the blob signer's skew (``/_emulator/settings``); ``/_emulator/reset``
clears both (see ``emulator.faults``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from encordfs.emulator import auth, faults, shapes, synthetic
from encordfs.emulator.server import (
    DEFAULT_MAX_METADATA_BYTES,
    DEFAULT_URL_TTL_S,
    Emulator,
)

log = logging.getLogger("encordfs.emulator")

EXIT_OK = 0
EXIT_USAGE = 2
SAMPLE_SOURCE = "sample"


class CliError(Exception):
    """A user mistake: reported as one line on stderr, exit 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default %(default)s; admin endpoints are unauthenticated)"
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 = any free port (default)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="state directory (SQLite + blobs); default: a temporary dir deleted at exit",
    )
    _repeatable(
        parser,
        "--import",
        "imports",
        Path,
        "DIR",
        "import the dataset folders under DIR (repeatable; idempotent)",
    )
    parser.add_argument("--sample", action="store_true", help="create the sample workspace (idempotent)")
    _repeatable(
        parser,
        "--generate",
        "generate",
        _generate_spec,
        "TITLE:ROWS[:BYTES]",
        "create a dataset of ROWS synthetic IMAGE rows of BYTES bytes each (default "
        f"{synthetic.DEFAULT_SIZE_BYTES}), generated on the fly (repeatable; idempotent per TITLE)",
    )
    _repeatable(
        parser,
        "--authorized-key",
        "authorized_keys",
        Path,
        "FILE",
        "OpenSSH public key file (or private key file) to accept (repeatable); "
        "default: a demo key made in the data dir",
    )
    parser.add_argument(
        "--url-ttl",
        dest="url_ttl",
        type=int,
        default=DEFAULT_URL_TTL_S,
        metavar="SECONDS",
        help="lifetime of signed blob URLs (default %(default)s)",
    )
    parser.add_argument(
        "--blob-base-url",
        dest="blob_base_url",
        default=None,
        metavar="URL",
        help="BENCHMARKS ONLY: signed URLs point at URL/<blob key> (a web server whose root is "
        "<data-dir>/blobs, e.g. nginx); that server does not check signatures or expiry",
    )
    parser.add_argument(
        "--shape",
        choices=sorted(shapes.SHAPES),
        default=shapes.DEFAULT.name,
        help="how data is rendered: 'default' (the emulator's reading of the SDK) or 'recorded' (as payloads "
        "recorded from the real service look; docs/RECORDED-SHAPES.md)",
    )
    parser.add_argument("--latency-ms", type=int, default=0, help="added delay on every API call (not blobs)")
    _repeatable(
        parser,
        "--fault",
        "faults",
        _fault_rule,
        "RULE_JSON",
        "a fault rule in force from the start, as posted to /_emulator/faults (repeatable), e.g. "
        '\'{"endpoint": "blob.get", "drop_after_bytes": 4096, "rate": 0.05}\'; /_emulator/reset clears it',
    )
    parser.add_argument(
        "--clock-skew",
        dest="clock_skew_s",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="add SECONDS to the clock used to sign and check blob URLs (runtime: /_emulator/settings)",
    )
    parser.add_argument(
        "--max-metadata-bytes",
        type=int,
        default=DEFAULT_MAX_METADATA_BYTES,
        help="client metadata limit in bytes of compact JSON (default %(default)s); over it → 413",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-vv: requests)")


def _repeatable(
    parser: argparse.ArgumentParser, flag: str, dest: str, kind: Callable[[str], Any], metavar: str, help: str
) -> None:
    """An option that may be given again and again: ``args.<dest>`` lists its values (none by default)."""
    parser.add_argument(flag, dest=dest, action="append", type=kind, default=[], metavar=metavar, help=help)


def _fault_rule(text: str) -> faults.FaultRule:
    try:
        return faults.parse_rule_text(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _generate_spec(text: str) -> synthetic.GenerateSpec:
    try:
        return synthetic.parse_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    _setup_logging(int(getattr(args, "verbose", 0) or 0))
    temp_dir: Path | None = None
    try:
        if args.data_dir is None:
            temp_dir = data_dir = Path(tempfile.mkdtemp(prefix="encordfs-emulator-"))
        else:
            data_dir = Path(args.data_dir).expanduser()
        return _serve(args, data_dir)
    except CliError as exc:
        print(f"encordfs emulator: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _serve(args: argparse.Namespace, data_dir: Path) -> int:
    _check_args(args)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create data dir {data_dir}: {exc.strerror}") from None
    key_lines: list[str] = []
    demo_key: Path | None = None
    try:
        for path in args.authorized_keys:
            key_lines.extend(auth.read_authorized_key_file(path.expanduser()))
        if not key_lines:
            demo_key, line = auth.ensure_demo_key(data_dir)
            key_lines.append(line)
    except (auth.KeyFileError, OSError) as exc:
        raise CliError(str(exc)) from None

    emu = Emulator(
        data_dir,
        host=args.host,
        port=args.port,
        url_ttl_s=args.url_ttl,
        authorized_keys=key_lines,
        latency_ms=args.latency_ms,
        max_metadata_bytes=args.max_metadata_bytes,
        blob_base_url=getattr(args, "blob_base_url", None),
        faults=getattr(args, "faults", None) or [],
        shape=shapes.SHAPES[getattr(args, "shape", None) or shapes.DEFAULT.name],
    )
    skew_s = float(getattr(args, "clock_skew_s", 0.0) or 0.0)
    if skew_s:
        emu.faults.update_settings({"clock_skew_s": skew_s})
    stop = threading.Event()
    previous = _install_signal_handlers(stop)
    try:
        _import_all(emu, args, data_dir)
        try:
            emu.start()
        except OSError as exc:
            raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
        if demo_key is not None:
            print(f"ssh_key_file={demo_key}", flush=True)
        print(f"domain={emu.domain}", flush=True)
        stop.wait()
        log.info("shutting down")
    finally:
        emu.stop()
        _restore_signal_handlers(previous)
    return EXIT_OK


def _check_args(args: argparse.Namespace) -> None:
    for directory in args.imports:
        if not directory.expanduser().is_dir():
            raise CliError(f"import dir {directory} does not exist or is not a directory")
    if args.url_ttl <= 0:
        raise CliError("--url-ttl must be positive")
    if not 0 <= args.port <= 65535:
        raise CliError("--port must be within 0..65535")
    base = getattr(args, "blob_base_url", None)
    if base is not None and not base.startswith(("http://", "https://")):
        raise CliError("--blob-base-url must be an http:// or https:// URL")
    if args.latency_ms < 0 or args.max_metadata_bytes <= 0:
        raise CliError("--latency-ms must be >= 0 and --max-metadata-bytes > 0")


def _import_all(emu: Emulator, args: argparse.Namespace, data_dir: Path) -> None:
    store = emu.store
    if args.sample:
        if store.is_source_imported(SAMPLE_SOURCE):
            log.info("sample workspace already in %s", data_dir)
        else:
            from encordfs.emulator import sample

            for spec in sample.generate(data_dir / "sample-src"):
                store.ingest(spec, source=SAMPLE_SOURCE)
            log.info("created the sample workspace")
    for spec in getattr(args, "generate", None) or []:
        started = time.monotonic()
        store.ingest_synthetic(spec.title, spec.rows, spec.size_bytes)
        log.info(
            "synthetic dataset %r: %d rows of %d bytes ready in %.1f s",
            spec.title,
            spec.rows,
            spec.size_bytes,
            time.monotonic() - started,
        )
    if args.imports:
        from encordfs.emulator import importer

        for directory in args.imports:
            root = directory.expanduser().resolve()
            try:
                specs = importer.scan(root)
            except OSError as exc:
                raise CliError(f"cannot import {directory}: {exc.strerror or exc}") from None
            for spec in specs:
                store.ingest(spec, source=f"import:{root}")
            log.info("imported %d dataset(s) from %s", len(specs), root)


def _install_signal_handlers(stop: threading.Event) -> dict[int, object]:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_signal_handlers(previous: dict[int, object]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)  # type: ignore[arg-type]


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger("encordfs")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encordfs emulator", description="Run the local Encord emulator.")
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
