"""The one place where an emulator failure becomes bytes on the wire.

Handlers raise :class:`ApiError` (an HTTP-ish status plus a message); :func:`render` turns it into
the reply format of the API family that was called (wire reference §2):

* **v2** (``/v2/public/...``): the HTTP status itself, body ``{"message": ...}``.
* **legacy** (``POST /public``): statuses the SDK only understands out of the envelope — 413, 429
  and every 5xx — go out as that HTTP status with a JSON ``{"message": ...}`` body (the SDK's
  retry policy sees them; 429 and 413 become ``RateLimitExceededError`` / ``PayloadTooLargeError``).
  Everything else is an envelope ``{"status": <code>, "response": ["<CODE>"], "payload": msg}`` on
  HTTP 200, where ``response`` is a one-element list (a bare string would degrade to
  ``GenericServerError``). The recorded shape (``shapes.RECORDED``) sends envelopes as the real service
  was recorded doing: HTTP 400 and ``"status": 400`` (``legacy_http_status``).
* **blob** (signed URLs): an S3-style XML error document.

``Retry-After`` is added whenever the error carries one (faults with ``retry_after``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal
from xml.sax.saxutils import escape

Family = Literal["legacy", "v2", "blob", "admin"]

# Legacy envelope codes by status, for errors that stay inside the envelope.
_LEGACY_CODES = {
    400: "INVALID_ARGUMENTS_ERROR",
    401: "AUTHENTICATION_ERROR",
    403: "AUTHORISATION_ERROR",
    404: "RESOURCE_NOT_FOUND_ERROR",
    405: "METHOD_NOT_ALLOWED_ERROR",
    409: "RESOURCE_EXISTS_ERROR",
}
# Statuses a legacy client must see as a real HTTP status (wire reference §2.1, §2.3).
_LEGACY_OUT_OF_ENVELOPE = {413, 429}

_S3_CODES = {400: "InvalidArgument", 403: "AccessDenied", 404: "NoSuchKey", 416: "InvalidRange"}


@dataclass
class ApiError(Exception):
    """A failure to report to the client.

    ``legacy_code`` overrides the envelope code derived from ``status`` (e.g.
    ``SSH_KEY_NOT_FOUND_ERROR``, which is a 401 in spirit but has its own code).
    """

    status: int
    message: str
    legacy_code: str | None = None
    retry_after_s: int | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


@dataclass
class Rendered:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


def render(family: Family, err: ApiError, legacy_http_status: int | None = None) -> Rendered:
    """Render ``err`` in the reply format of ``family`` (see the module docstring). ``legacy_http_status``:
    the HTTP status (and envelope ``status``) of legacy error envelopes; ``None`` = HTTP 200, ``status`` = ``err.status``."""
    headers = dict(err.headers)
    if err.retry_after_s is not None:
        headers["Retry-After"] = str(err.retry_after_s)
    if family == "blob":
        code = _S3_CODES.get(err.status, "InternalError" if err.status >= 500 else "AccessDenied")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{escape(err.message)}</Message></Error>"
        ).encode()
        return Rendered(err.status, "application/xml", body, headers)
    if family == "legacy" and err.status not in _LEGACY_OUT_OF_ENVELOPE and err.status < 500:
        code = err.legacy_code or _LEGACY_CODES.get(err.status, "UNKNOWN_ERROR")
        status = err.status if legacy_http_status is None else legacy_http_status
        envelope = {"status": status, "response": [code], "payload": err.message}
        return Rendered(legacy_http_status or 200, "application/json", json.dumps(envelope).encode(), headers)
    body = json.dumps({"message": err.message}).encode()
    return Rendered(err.status, "application/json", body, headers)
