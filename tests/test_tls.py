"""TLS trust end to end: a mount whose Encord API and signed blob URLs are HTTPS behind a private CA.

The emulator runs as usual; a ``TlsProxy`` (a throwaway CA's certificate for 127.0.0.1) fronts it,
and ``--blob-base-url`` makes the signed URLs point at that proxy. With ``--ca-file`` the SDK side
(``REQUESTS_CA_BUNDLE``) and the read path (libcurl ``CAINFO``, httpx's SSL context) both trust the
CA and every byte is right; without it a read fails with EIO and the log says why; a CA file that is
missing or not PEM stops ``encordfs mount`` with one line before anything is mounted.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from encordfs.control import mounted_at
from encordfs.emulator import synthetic
from harness.emulator import RunningEmulator
from harness.mount import MountedFS
from harness.tls import Pki, TlsProxy, make_pki, server_context

ROWS, SIZE = 3, 700_000
SECRET = re.compile(r"Signature=|Expires=\d")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_world(pki: Pki) -> Iterator[tuple[RunningEmulator, TlsProxy]]:
    with TlsProxy(server_context(pki)) as proxy:
        base = f"https://127.0.0.1:{proxy.port}/blobs"
        with RunningEmulator(["--generate", f"tls:{ROWS}:{SIZE}", "--blob-base-url", base]) as emu:
            proxy.start(int(urlsplit(emu.domain).port or 80))
            yield emu, proxy


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="encordfs-tls-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _expected(dataset: Path, name: str) -> bytes:
    tag = os.getxattr(dataset, "user.encord.dataset_hash").decode().replace("-", "")[:12]
    n = int(name.removeprefix("img_").removesuffix(".jpg"))
    return synthetic.read(f"{tag}.{n}", SIZE, 0, SIZE)


@pytest.mark.parametrize("http_client", ["curl", "httpx"])
def test_mount_over_https_with_ca_file(
    tls_world: tuple[RunningEmulator, TlsProxy], pki: Pki, workdir: Path, http_client: str
) -> None:
    emu, proxy = tls_world
    assert emu.key_file is not None
    https_domain = f"https://127.0.0.1:{proxy.port}"  # the SDK goes through TLS too
    with MountedFS(
        https_domain, emu.key_file, workdir, "--ca-file", str(pki.ca_file), "--http-client", http_client
    ) as m:
        dataset = m.path / "tls"
        names = sorted(p.name for p in dataset.iterdir())
        assert len(names) == ROWS
        for name in names:
            assert (dataset / name).read_bytes() == _expected(dataset, name), name
    assert not SECRET.search(m.log())


def test_untrusted_certificate_is_eio_with_the_reason_logged(
    tls_world: tuple[RunningEmulator, TlsProxy], workdir: Path
) -> None:
    emu, _ = tls_world
    assert emu.key_file is not None
    with MountedFS(emu.domain, emu.key_file, workdir) as m:  # API over plain HTTP, blobs over TLS
        target = next((m.path / "tls").iterdir())
        with pytest.raises(OSError) as info:
            target.read_bytes()
        assert info.value.errno == errno.EIO
    log = m.log()
    reasons = [line for line in log.splitlines() if "TLS" in line and "certificate" in line.lower()]
    assert reasons, log[-3000:]
    assert not SECRET.search(log)


@pytest.mark.parametrize("foreground", [False, True])
@pytest.mark.parametrize("content", [None, "", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_bad_ca_file_is_one_line_before_mounting(workdir: Path, foreground: bool, content: str | None) -> None:
    ca = workdir / "ca.pem"
    if content is not None:
        ca.write_text(content)
    (workdir / "mnt").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "encordfs", "mount", str(workdir / "mnt"), "--domain", "http://127.0.0.1:9"]
        + ["--ca-file", str(ca), "--cache-dir", str(workdir / "c")]
        + (["--foreground"] if foreground else []),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("encordfs: error: --ca-file: ") and str(ca) in lines[0], lines[0]
    assert ("does not exist" if content is None else "no usable PEM") in lines[0]
    assert not mounted_at(workdir / "mnt")


def test_options_reach_config_settings_and_the_mount_process(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    from encordfs import errors, mount_helper
    from encordfs.cli import _given, build_parser
    from encordfs.settings import mount_argv, resolve

    for name in list(os.environ):
        if name.startswith("ENCORDFS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(pki.ca_file.parent)
    args = build_parser().parse_args(["mount", "/mnt/x", "--http-client", "httpx", "--ca-file", pki.ca_file.name])
    settings = resolve(_given(args), args.config)
    argv = mount_argv(settings, Path("/mnt/x"))
    assert argv[argv.index("--http-client") + 1] == "httpx"
    assert argv[argv.index("--ca-file") + 1] == str(pki.ca_file.resolve())  # absolute for the detached process
    assert (settings.http_client, settings.ca_file) == ("httpx", str(pki.ca_file.resolve()))
    assert (resolve({}).http_client, resolve({}).ca_file) == ("curl", None)  # the defaults
    monkeypatch.setenv("ENCORDFS_HTTP_CLIENT", "httpx")
    monkeypatch.setenv("ENCORDFS_CA_FILE", str(pki.ca_file))
    assert (resolve({}).http_client, resolve({}).ca_file) == ("httpx", str(pki.ca_file.resolve()))
    monkeypatch.setenv("ENCORDFS_HTTP_CLIENT", "urllib")
    with pytest.raises(errors.InvalidValue, match="http-client"):
        resolve({})
    _, helper_argv = mount_helper.parse(["encord", "/mnt/x", "-o", "ca_file=/etc/corp-ca.pem,http_client=httpx"])
    assert helper_argv[helper_argv.index("--ca-file") + 1] == "/etc/corp-ca.pem"
    assert helper_argv[helper_argv.index("--http-client") + 1] == "httpx"
