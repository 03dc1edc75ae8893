"""Signed blob URLs (CloudFront style) and HTTP byte ranges for the blob endpoint.

URL format::

    http://HOST:PORT/blobs/<blob_key>?Expires=<unix seconds>&Signature=<hex>

where ``Signature = HMAC-SHA256(secret, "<path>\\n<Expires>")`` and ``path`` is ``/blobs/<blob_key>``.
With ``blob_base_url`` set (``--blob-base-url URL``, benchmarks only) URLs are instead
``URL/<blob_key>?Expires=..&Signature=..``: the path relative to the blob dir, so a plain web server
whose document root is ``<data-dir>/blobs`` (nginx in ``benchmarks/``) serves the bytes. Such a server
does not check the signature or the expiry: that mode is for measuring byte throughput, never for
tests of URL handling. The emulator's own ``/blobs/`` endpoint keeps verifying as before.

The secret is 32 random bytes kept in ``<data-dir>/url-secret`` (mode 0600), so URLs minted before a
restart stay valid until they expire. A changed path or ``Expires`` breaks the HMAC; an old
``Expires`` is refused even with a good signature. Both answer 403 ``AccessDenied`` (S3 style).

:func:`parse_range` implements one ``Range: bytes=`` spec (``a-b``, ``a-``, ``-n``); anything it
does not understand (other units, several ranges, bad syntax) is ignored and the whole object served,
as RFC 9110 allows.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

from encordfs.emulator.errors import ApiError

BLOB_PREFIX = "/blobs/"
SECRET_NAME = "url-secret"
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def load_or_create_secret(data_dir: Path) -> bytes:
    path = data_dir / SECRET_NAME
    if path.exists():
        return path.read_bytes()
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret)
    return secret


class UrlSigner:
    def __init__(
        self,
        secret: bytes,
        base_url: str,
        ttl_s: int | Callable[[], int],
        clock: Callable[[], float] = time.time,
        blob_base_url: str | None = None,
    ) -> None:
        self._secret = secret
        self._base_url = base_url.rstrip("/")
        self._blob_base_url = blob_base_url.rstrip("/") if blob_base_url else None
        self._ttl_s = ttl_s  # a callable is asked at each signing (the emulator's runtime ``url_ttl_s``)
        self._clock = clock

    def _mac(self, path: str, expires: str) -> str:
        return hmac.new(self._secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, blob_key: str) -> str:
        path = f"{BLOB_PREFIX}{blob_key}"
        ttl_s = self._ttl_s() if callable(self._ttl_s) else self._ttl_s
        # Rounded up: a URL lives at least ``ttl_s`` (rounding down gave a 1 s URL anywhere from 0 to 1 s).
        expires = str(math.ceil(self._clock() + ttl_s))
        query = f"?Expires={expires}&Signature={self._mac(path, expires)}"
        if self._blob_base_url is not None:  # benchmark mode: an external server, unverified
            return f"{self._blob_base_url}/{blob_key}{query}"
        return f"{self._base_url}{path}{query}"

    def verify(self, path: str, query: str) -> str:
        """Check a blob request; return its blob key or raise a 403 :class:`ApiError`."""
        params = parse_qs(query)
        expires = (params.get("Expires") or [""])[0]
        signature = (params.get("Signature") or [""])[0]
        if not expires or not signature:
            raise ApiError(403, "Request is missing Expires or Signature")
        if not hmac.compare_digest(self._mac(path, expires), signature):
            raise ApiError(403, "The request signature we calculated does not match the signature you provided.")
        if not expires.isdigit() or int(expires) < self._clock():
            raise ApiError(403, "Request has expired")
        return path[len(BLOB_PREFIX) :]


class RangeNotSatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive byte positions for a satisfiable range, None for "whole object".

    Raises :class:`RangeNotSatisfiable` for a well-formed range that selects nothing.
    """
    if not header:
        return None
    match = _RANGE_RE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first_s, last_s = match.groups()
    if not first_s and not last_s:
        return None
    if not first_s:  # suffix: the last n bytes
        n = int(last_s)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - n), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None  # invalid spec: ignore the header
    if first >= size:
        raise RangeNotSatisfiable
    return first, min(last, size - 1)
