"""A throwaway certificate authority and a server certificate for 127.0.0.1/localhost (tests, benchmarks).

``make_pki(directory)`` writes ``ca.pem`` (the CA certificate: what ``--ca-file`` points at),
``server.pem`` (the server's certificate followed by the CA's, a full chain) and ``server.key``
(unencrypted), and returns their paths. ``server_context(pki)`` is an ``ssl.SSLContext`` that serves
with them; wrap a listening socket with it (``context.wrap_socket(sock, server_side=True)``) or point
nginx at the two files. EC P-256 keys: quick to make, cheap to handshake. ``TlsProxy`` puts TLS in
front of a plain server (the emulator), for mounts whose API and blob URLs are HTTPS.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path, ca_name: str = "encordfs test CA") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    pki.ca_file.write_bytes(ca_cert.public_bytes(pem))
    pki.cert_file.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    pki.key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pki.key_file.chmod(0o600)
    return pki


def server_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    return context


class TlsProxy:
    """TLS in front of a plain TCP server on 127.0.0.1: ``https://127.0.0.1:{port}`` -> ``target_port``.

    The listening port exists from construction (so URLs naming it can be made before the target
    runs); ``start(target_port)`` begins accepting. One thread per direction per connection; a
    client that refuses the certificate just ends its connection. ``close`` stops accepting.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._target = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self, target_port: int) -> TlsProxy:
        self._target = target_port
        self._thread.start()
        return self

    def close(self) -> None:
        self._listener.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> TlsProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self._context.wrap_socket(raw, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self._target))
        except OSError:  # ssl.SSLError included: the client refused our certificate
            raw.close()
            return
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join(timeout=30)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until either side ends, then close both (which ends the other direction's pump too)."""
    try:
        while data := source.recv(256 * 1024):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the other direction's recv; close alone would not
            except OSError:
                pass
            sock.close()
