"""Keys and request authentication for the emulator (wire reference §1).

Owns:

* reading authorised keys: OpenSSH public key lines (``ssh-ed25519 AAAA... comment``, any number
  per file, ``#`` comments allowed) or an OpenSSH *private* key file, whose public half is used;
* the demo key pair made in the data dir when no key is given (``demo_ed25519`` mode 0600 +
  ``demo_ed25519.pub``, reused on restart);
* verifying the three schemes the SDK uses, against the keys/tokens registered in the store:

  - legacy v1: ``Authorization: <keyid>:<hex ed25519 signature of sha256(raw body)>``;
  - v2 HTTP message signatures: ``Content-Digest`` recomputed over the raw body, the signature base
    rebuilt from the received method / request target / digest / ``Signature-Input``, the Ed25519
    signature verified, ``created`` within ``max_skew_s`` of server time;
  - ``Authorization: Bearer <token>`` (tokens minted by ``/v2/public/user/bearer-token``).

``keyid`` is the lower-case hex of the 32-byte raw Ed25519 public key, so the verifying key is
rebuilt from the keyid itself; the store only says whether (and for whom) it is registered.

Failures raise :class:`AuthFailure`; the server maps ``unknown_key`` on the legacy family to
``SSH_KEY_NOT_FOUND_ERROR`` and everything else to ``AUTHENTICATION_ERROR`` / HTTP 401 (§1.5).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FailureKind = Literal["missing", "malformed", "unknown_key", "bad_signature", "bad_token", "expired"]

DEMO_KEY_NAME = "demo_ed25519"
_SIG_LABEL = "encord-sig"
_SIG_INPUT_RE = re.compile(r"^encord-sig=(?P<params>\((?P<covered>[^)]*)\)(?P<rest>(;[a-z]+=[^;]*)*))$")
_PARAM_RE = re.compile(r';([a-z]+)=("[^"]*"|[0-9]+)')
_EXPECTED_COVERED = '"@method" "@request-target" "content-digest"'


class KeyFileError(ValueError):
    """An authorised-key file cannot be read or holds no Ed25519 key (one-line message)."""


@dataclass
class AuthFailure(Exception):
    kind: FailureKind
    message: str

    def __str__(self) -> str:
        return self.message


class KeyRegistry(Protocol):
    def user_for_keyid(self, keyid: str) -> int | None: ...

    def user_for_token(self, token: str) -> int | None: ...


def keyid_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def openssh_public_line(public_key: Ed25519PublicKey, comment: str = "") -> str:
    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".rstrip()


def keyid_from_line(line: str) -> str:
    """keyid of one ``ssh-ed25519 AAAA...`` line, or of a 64-hex keyid given as is."""
    text = line.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return text.lower()
    parts = text.split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        raise KeyFileError(f"not an ssh-ed25519 public key: {text[:40]!r}")
    try:
        key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, binascii.Error) as exc:
        raise KeyFileError(f"invalid ssh-ed25519 public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError("only Ed25519 keys are supported")
    return keyid_of(key)


def read_authorized_key_file(path: Path) -> list[str]:
    """Public key lines from ``path``: an authorized_keys-style file or an OpenSSH private key."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if "PRIVATE KEY" in text:
        try:
            private = serialization.load_ssh_private_key(text.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"cannot load private key {path}: {exc}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyFileError(f"{path}: only Ed25519 keys are supported")
        return [openssh_public_line(private.public_key())]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise KeyFileError(f"no key in {path}")
    for line in lines:
        keyid_from_line(line)  # validate early: a bad line is a startup error, not a 401 later
    return lines


def write_keypair(private_path: Path, comment: str = "encordfs-emulator") -> Ed25519PrivateKey:
    """Create an Ed25519 key pair: ``private_path`` (OpenSSH, mode 0600) and ``private_path.pub``."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(private_path, 0o600)
    Path(f"{private_path}.pub").write_text(openssh_public_line(key.public_key(), comment) + "\n")
    return key


def ensure_demo_key(data_dir: Path) -> tuple[Path, str]:
    """The demo key of ``data_dir`` (created on first use): (private key path, public key line)."""
    path = data_dir / DEMO_KEY_NAME
    if not path.exists():
        write_keypair(path, comment="encordfs-emulator-demo")
    return path, read_authorized_key_file(path)[0]


class Authenticator:
    """Verifies requests; returns the authenticated user id or raises :class:`AuthFailure`."""

    def __init__(self, registry: KeyRegistry, max_skew_s: int = 300, clock: Callable[[], float] = time.time) -> None:
        self._registry = registry
        self._max_skew_s = max_skew_s
        self._clock = clock
        self._keys: dict[str, Ed25519PublicKey] = {}

    # -- entry points -------------------------------------------------------------------------

    def legacy(self, headers: Mapping[str, str], body: bytes) -> int:
        auth = headers.get("Authorization") or ""
        if not auth:
            raise AuthFailure("missing", "missing Authorization header")
        if auth.startswith("Bearer "):
            return self._bearer(auth)
        keyid, sep, sig_hex = auth.partition(":")
        if not sep:
            raise AuthFailure("malformed", "Authorization must be '<keyid>:<signature>'")
        user = self._user_for_keyid(keyid.strip())
        try:
            signature = bytes.fromhex(sig_hex.strip())
        except ValueError:
            raise AuthFailure("bad_signature", "signature is not hex") from None
        self._verify(keyid.strip(), signature, hashlib.sha256(body).digest())
        return user

    def v2(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> int:
        auth = headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            return self._bearer(auth)
        sig_input = headers.get("Signature-Input")
        signature = headers.get("Signature")
        digest = headers.get("Content-Digest")
        if not (sig_input and signature and digest):
            raise AuthFailure("missing", "request is not signed (no Signature / Bearer token)")
        match = _SIG_INPUT_RE.match(sig_input.strip())
        if not match or match.group("covered") != _EXPECTED_COVERED:
            raise AuthFailure("malformed", "unsupported Signature-Input")
        params = dict((k, v.strip('"')) for k, v in _PARAM_RE.findall(match.group("rest")))
        if params.get("alg") != "ed25519" or "keyid" not in params or "created" not in params:
            raise AuthFailure("malformed", 'Signature-Input needs alg="ed25519", keyid and created')
        user = self._user_for_keyid(params["keyid"])
        expected_digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
        if digest.strip() != expected_digest:
            raise AuthFailure("bad_signature", "Content-Digest does not match the body")
        if abs(self._clock() - int(params["created"])) > self._max_skew_s:
            raise AuthFailure("expired", "signature 'created' is too far from server time")
        sig_prefix = f"{_SIG_LABEL}=:"
        sig = signature.strip()
        if not (sig.startswith(sig_prefix) and sig.endswith(":")):
            raise AuthFailure("malformed", "malformed Signature header")
        try:
            sig_bytes = base64.b64decode(sig[len(sig_prefix) : -1], validate=True)
        except (binascii.Error, ValueError):
            raise AuthFailure("bad_signature", "signature is not base64") from None
        base = "\n".join(
            [
                f'"@method": {method.upper()}',
                f'"@request-target": {target}',
                f'"content-digest": {expected_digest}',
                f'"@signature-params": {match.group("params")}',
            ]
        )
        self._verify(params["keyid"], sig_bytes, base.encode())
        return user

    # -- helpers ------------------------------------------------------------------------------

    def _bearer(self, auth: str) -> int:
        user = self._registry.user_for_token(auth[len("Bearer ") :].strip())
        if user is None:
            raise AuthFailure("bad_token", "invalid bearer token")
        return user

    def _user_for_keyid(self, keyid: str) -> int:
        user = self._registry.user_for_keyid(keyid.lower()) if re.fullmatch(r"[0-9a-fA-F]{64}", keyid) else None
        if user is None:
            raise AuthFailure("unknown_key", "public key not registered")
        return user

    def _verify(self, keyid: str, signature: bytes, message: bytes) -> None:
        key = self._keys.get(keyid)
        if key is None:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(keyid))
            self._keys[keyid] = key
        try:
            key.verify(signature, message)
        except InvalidSignature:
            raise AuthFailure("bad_signature", "signature verification failed") from None
