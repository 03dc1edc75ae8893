"""Run the Encord emulator as a real subprocess for tests, and make keys and signed raw requests.

``RunningEmulator`` starts ``python -m encordfs.emulator --data-dir TMP ...``, waits (60 s max) for
the ``domain=`` line, and always cleans up on exit — terminate, kill after 5 s, remove the temp dirs
it created — even when the test body raised. Its stderr goes to a log file whose tail is attached to
startup failures.

``storage_options`` are the ``encord://`` options for a running emulator. ``make_keypair`` makes
extra (e.g. unregistered) Ed25519 keys; ``sign_legacy`` / ``sign_v2`` build the SDK's auth headers
independently of the SDK (wire reference §1.2, §1.3), so tests can send raw httpx requests and
corrupt exactly one part of them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from encordfs.emulator import launch
from encordfs.emulator.auth import keyid_of, write_keypair

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0


@contextlib.contextmanager
def storage_options(emulator: RunningEmulator, prefix: str) -> Iterator[dict[str, Any]]:
    """``encord://`` storage options (fsspec) for ``emulator`` and its key, with a cache dir of their
    own (named ``prefix…``), removed at exit."""
    cache = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield {"domain": emulator.domain, "ssh_key_file": str(emulator.key_file), "cache_dir": str(cache)}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def make_keypair(directory: Path, name: str = "extra_ed25519") -> Path:
    """A new Ed25519 key pair in ``directory``; returns the private key path (``.pub`` beside it)."""
    path = Path(directory) / name
    write_keypair(path)
    return path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def sign_legacy(body: bytes, key: Ed25519PrivateKey) -> dict[str, str]:
    signature = key.sign(hashlib.sha256(body).digest())
    return {"Authorization": f"{keyid_of(key.public_key())}:{signature.hex()}"}


def sign_v2(
    method: str, target: str, body: bytes, key: Ed25519PrivateKey, created: int | None = None
) -> dict[str, str]:
    """Headers of an HTTP message signature over ``target`` (path + ``?query``, as sent)."""
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    params = (
        '("@method" "@request-target" "content-digest")'
        f';created={int(time.time()) if created is None else created};keyid="{keyid_of(key.public_key())}";alg="ed25519"'
    )
    base = "\n".join(
        [
            f'"@method": {method.upper()}',
            f'"@request-target": {target}',
            f'"content-digest": {digest}',
            f'"@signature-params": {params}',
        ]
    )
    signature = base64.b64encode(key.sign(base.encode())).decode()
    return {
        "Content-Digest": digest,
        "Signature-Input": f"encord-sig={params}",
        "Signature": f"encord-sig=:{signature}:",
    }


class RunningEmulator:
    """``with RunningEmulator(args=[...]) as emu: ...`` — see the module docstring.

    ``data_dir`` given → used and kept; otherwise a temp dir removed at exit. With no
    ``--authorized-key`` in ``args`` the emulator makes its demo key, exposed as ``key_file``.
    """

    def __init__(self, args: list[str] | None = None, data_dir: Path | None = None) -> None:
        self.args = list(args or [])
        self.shape = self.args[self.args.index("--shape") + 1] if "--shape" in self.args else "default"
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="emu-test-"))
        self.domain = ""
        self.key_file: Path | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.stderr.log"
        self._proc: subprocess.Popen[str] | None = None
        self.returncode: int | None = None

    def __enter__(self) -> RunningEmulator:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        with open(self.log_path, "w") as log:
            try:
                launched = launch.start(self.data_dir, self.args, stderr=log, timeout_s=START_TIMEOUT_S)
            except launch.NotReady as exc:
                raise RuntimeError(f"{exc}: {self.stderr()[-2000:]}") from None
        self._proc = launched.proc
        self.domain = launched.domain
        if launched.key_file is not None:
            self.key_file = launched.key_file

    def stderr(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            self.returncode = proc.returncode
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)

    # -- admin endpoints ------------------------------------------------------------------------

    def _admin(self, method: str, path: str, json: Any = None) -> Any:
        response = httpx.request(method, f"{self.domain}/_emulator/{path}", json=json, timeout=30)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, int]:
        return self._admin("GET", "stats")  # type: ignore[no-any-return]

    def reset(self, data: bool = False) -> None:
        self._admin("POST", "reset", {"data": data})

    def add_faults(self, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._admin("POST", "faults", rules)  # type: ignore[no-any-return]

    def clear_faults(self) -> None:
        """Drop every fault rule (counters stay, unlike ``reset``)."""
        self._admin("DELETE", "faults")

    def add_row(
        self, dataset: str, title: str, data: bytes, client_metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body = {
            "dataset": dataset,
            "title": title,
            "bytes_b64": base64.b64encode(data).decode(),
            "client_metadata": client_metadata,
        }
        return self._admin("POST", "rows", body)  # type: ignore[no-any-return]

    def delete_row(self, data_hash: str) -> None:
        self._admin("DELETE", f"rows/{data_hash}")

    def client(self, key_file: Path | None = None) -> Any:
        from encord import EncordUserClient

        path = key_file or self.key_file
        assert path is not None, "no key file: pass one or run with the demo key"
        return EncordUserClient.create_with_ssh_private_key(ssh_private_key_path=str(path), domain=self.domain)
