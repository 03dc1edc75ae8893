"""The error family of the filesystem core: every failure carries the errno the kernel should see.

Core code raises these; the FUSE adapter maps them by ``.errno`` in one place (and only there catches
``Exception``, logs once and answers EIO). Errno is decided once, by type, never by message parsing.

Messages are for humans and logs. They must never contain a signed URL, an API key or a token:
use ``encordfs.core.urls.redact`` on any URL that goes into a message.
"""

from __future__ import annotations

import errno as _errno


class FsError(Exception):
    """Base of the family; a bare ``FsError`` means EIO."""

    errno: int = _errno.EIO

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class NotFound(FsError):
    errno = _errno.ENOENT


class ReadOnly(FsError):
    errno = _errno.EROFS


class PermissionDenied(FsError):
    errno = _errno.EACCES


class NoData(FsError):
    errno = _errno.ENODATA


class InvalidValue(FsError):
    errno = _errno.EINVAL


class TooBig(FsError):
    errno = _errno.E2BIG


class Exists(FsError):
    errno = _errno.EEXIST


class Stale(FsError):
    errno = _errno.ESTALE


class RemoteIOError(FsError):
    errno = _errno.EIO


class NotSupported(FsError):
    errno = _errno.ENOTSUP


class CrossDevice(FsError):
    errno = _errno.EXDEV


class Busy(FsError):
    errno = _errno.EBUSY


class NotADirectory(FsError):
    errno = _errno.ENOTDIR


class IsADirectory(FsError):
    errno = _errno.EISDIR


class NotPermitted(FsError):
    errno = _errno.EPERM


class NotEmpty(FsError):
    errno = _errno.ENOTEMPTY


# --- Backend errors: raised by backends (never SDK exceptions), shown to users by the CLI.


class BackendError(FsError):
    """A backend call failed; raised by ``encordfs.backend`` implementations, never SDK exceptions."""


class AuthError(BackendError):
    """The key or token was refused or unusable."""

    errno = _errno.EACCES


class Unavailable(BackendError):
    """Encord (or the emulator) cannot be reached."""


class TransientError(BackendError):
    """A call (a listing, a signing, a push) that may succeed if retried later: rate limit, server error,
    a reply that could not be understood. ``retry_after_s``: what the server asked for, if anything."""

    def __init__(self, message: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(BackendError):
    """A call that will never succeed as sent (payload too large, invalid arguments)."""


__all__ = [name for name, value in dict(globals()).items() if isinstance(value, type) and issubclass(value, FsError)]
