"""Logging for the CLI and mount processes: level from ``-v``, text or JSON lines, stderr or a file.

Owns ``setup`` (called once per process) and ``Redact``, a filter on the one handler that removes
secrets from every record however they got into the message: the query of any URL (a signed URL's
signature and expiry live there), OpenSSH private key blocks, and ``Authorization``/``Signature``
header values. HTTP client libraries, which log full request URLs, are held at ERROR regardless.

A log file is opened with ``WatchedFileHandler``, so logrotate may move it away under a running mount.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

_URL_QUERY = re.compile(r"(https?://[^\s?#'\"]+)\?[^\s'\"]*")
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL)
_AUTH_HEADER = re.compile(
    r"((?:authorization|signature|x-amz-security-token|token)['\"]?\s*[:=]\s*['\"]?)[^\s,'\"}]+", re.IGNORECASE
)


def redact(text: str) -> str:
    text = _URL_QUERY.sub(r"\1?<redacted>", text)
    text = _PRIVATE_KEY.sub("<private key redacted>", text)
    return _AUTH_HEADER.sub(r"\1<redacted>", text)


class Redact(logging.Filter):
    """Rewrites each record's message (arguments merged) and exception text without secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info or record.exc_text:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(out, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(verbosity: int, log_file: Path | None = None, log_format: str = "text") -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(Redact())
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # HTTP client libraries log full request URLs (signed URLs included) at INFO/DEBUG: never let them.
    # urllib3 warns about each retry it makes for the SDK: the SDK's final error is what we report.
    for noisy in ("httpx", "httpcore", "urllib3", "requests", "encord"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("mfusepy").setLevel(logging.ERROR if verbosity < 2 else logging.WARNING)
