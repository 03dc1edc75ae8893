"""Authentication of the Encord emulator (wire reference §1): real SDK clients for the
"wrong key / wrong token" paths, raw httpx requests with exactly one corrupted part for the rest.

The module's emulator runs with its demo key (no ``--authorized-key``), which also covers the
``ssh_key_file=`` contract.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from encord import EncordUserClient
from encord.exceptions import AuthenticationError, SshKeyNotFound

from encordfs.emulator import auth
from harness.emulator import RunningEmulator, load_private_key, make_keypair, sign_legacy, sign_v2


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("tree")
    (root / "ds").mkdir()
    (root / "ds" / "x.txt").write_text("hello")
    with RunningEmulator(["--import", str(root)]) as running:
        yield running


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keypair(tmp_path_factory.mktemp("keys"), "stranger_ed25519")


@pytest.fixture(scope="module")
def dataset_hash(emu: RunningEmulator) -> str:
    return str(emu.client().get_datasets()[0]["dataset"].dataset_hash)


def _legacy_body(dataset_hash: str) -> bytes:
    values = {"uid": None, "payload": {"dataset_access_settings": {"fetch_client_metadata": False, "fetch_rows": True}}}
    return json.dumps({"query_type": "dataset", "query_method": "GET", "values": values}).encode()


def _legacy(emu: RunningEmulator, body: bytes, headers: dict[str, str], dataset_hash: str) -> Any:
    base = {"Content-Type": "application/json", "ResourceType": "dataset", "ResourceID": dataset_hash}
    r = httpx.post(f"{emu.domain}/public", content=body, headers={**base, **headers}, trust_env=False)
    return r.json()


def _v2(
    emu: RunningEmulator, target: str, headers: dict[str, str], method: str = "GET", body: bytes = b""
) -> httpx.Response:
    return httpx.request(method, emu.domain + target, headers=headers, content=body or None, trust_env=False)


def _flip_hex(text: str) -> str:
    return text[:-1] + ("0" if text[-1] != "0" else "1")


# ---------------------------------------------------------------------------------- SDK clients


def test_demo_key_works_with_the_sdk(emu: RunningEmulator, dataset_hash: str) -> None:
    assert emu.key_file is not None and emu.key_file.name == auth.DEMO_KEY_NAME
    assert emu.client().get_dataset(dataset_hash).data_rows[0].title == "x.txt"


def test_unknown_key_legacy_is_ssh_key_not_found(emu: RunningEmulator, stranger: Path, dataset_hash: str) -> None:
    with pytest.raises(SshKeyNotFound):
        emu.client(stranger).get_dataset(dataset_hash)


def test_unknown_key_v2_is_authentication_error(emu: RunningEmulator, stranger: Path) -> None:
    with pytest.raises(AuthenticationError):
        emu.client(stranger).get_datasets()


def test_bad_bearer_token_both_families(emu: RunningEmulator, dataset_hash: str) -> None:
    client = EncordUserClient.create_with_bearer_token("not-a-token", domain=emu.domain)
    with pytest.raises(AuthenticationError):
        client.get_datasets()
    with pytest.raises(AuthenticationError):
        client.get_dataset(dataset_hash)


# ---------------------------------------------------------------------------------- raw legacy


def test_raw_legacy_signed_request_succeeds(emu: RunningEmulator, dataset_hash: str) -> None:
    body = _legacy_body(dataset_hash)
    reply = _legacy(emu, body, sign_legacy(body, load_private_key(emu.key_file)), dataset_hash)
    assert reply["status"] == 200 and reply["response"]["dataset_hash"] == dataset_hash


@pytest.mark.parametrize("corruption", ["signature", "body", "not-hex", "no-colon"])
def test_legacy_bad_signature_is_authentication_error(emu: RunningEmulator, dataset_hash: str, corruption: str) -> None:
    body = _legacy_body(dataset_hash)
    header = sign_legacy(body, load_private_key(emu.key_file))["Authorization"]
    if corruption == "signature":
        header = _flip_hex(header)
    elif corruption == "body":
        body = body.replace(b"false", b"true ")
    elif corruption == "not-hex":
        header = header.split(":")[0] + ":zz"
    else:
        header = header.replace(":", "")
    reply = _legacy(emu, body, {"Authorization": header}, dataset_hash)
    assert reply["status"] != 200 and reply["response"] == ["AUTHENTICATION_ERROR"]


def test_legacy_unregistered_key_raw_is_ssh_key_not_found(
    emu: RunningEmulator, stranger: Path, dataset_hash: str
) -> None:
    body = _legacy_body(dataset_hash)
    reply = _legacy(emu, body, sign_legacy(body, load_private_key(stranger)), dataset_hash)
    assert reply["response"] == ["SSH_KEY_NOT_FOUND_ERROR"]


def test_legacy_unsigned_is_authentication_error(emu: RunningEmulator, dataset_hash: str) -> None:
    reply = _legacy(emu, _legacy_body(dataset_hash), {}, dataset_hash)
    assert reply["response"] == ["AUTHENTICATION_ERROR"]


# ---------------------------------------------------------------------------------- raw v2


def test_raw_v2_signed_request_succeeds(emu: RunningEmulator) -> None:
    target = "/v2/public/datasets/list?includeOrgAccess=False"
    r = _v2(emu, target, sign_v2("GET", target, b"", load_private_key(emu.key_file)))
    assert r.status_code == 200 and len(r.json()["result"]) == 1


def test_v2_signed_post_body_is_covered(emu: RunningEmulator) -> None:
    key = load_private_key(emu.key_file)
    target = "/v2/public/storage/items/get-bulk"
    body = json.dumps({"itemUuids": [], "signUrls": False}).encode()
    ok = _v2(emu, target, {**sign_v2("POST", target, body, key), "Content-Type": "application/json"}, "POST", body)
    assert ok.status_code == 200 and ok.json() == {"results": [], "nextPageToken": None}
    other = json.dumps({"itemUuids": [], "signUrls": True}).encode()
    bad = _v2(emu, target, {**sign_v2("POST", target, body, key), "Content-Type": "application/json"}, "POST", other)
    assert bad.status_code == 401 and "message" in bad.json()


@pytest.mark.parametrize("corruption", ["signature", "target", "method", "created", "alg", "digest-header", "keyid"])
def test_v2_bad_signature_is_401(emu: RunningEmulator, stranger: Path, corruption: str) -> None:
    key = load_private_key(emu.key_file)
    target = "/v2/public/datasets/list?includeOrgAccess=False"
    headers = sign_v2("GET", target, b"", key)
    sent_target, method = target, "GET"
    if corruption == "signature":
        sig = headers["Signature"]
        headers["Signature"] = sig[:12] + ("A" if sig[12] != "A" else "B") + sig[13:]
    elif corruption == "target":
        sent_target = target.replace("False", "True")
    elif corruption == "method":
        headers = sign_v2("POST", target, b"", key)
    elif corruption == "created":
        headers = sign_v2("GET", target, b"", key, created=int(time.time()) - 3600)
    elif corruption == "alg":
        headers["Signature-Input"] = headers["Signature-Input"].replace('alg="ed25519"', 'alg="rsa"')
    elif corruption == "digest-header":
        headers["Content-Digest"] = "sha-256=:AAAA:"
    else:
        headers = sign_v2("GET", target, b"", load_private_key(stranger))
    r = _v2(emu, sent_target, headers, method)
    assert r.status_code == 401 and r.json()["message"]


def test_v2_unsigned_and_bad_bearer_are_401(emu: RunningEmulator) -> None:
    target = "/v2/public/datasets/list?includeOrgAccess=False"
    assert _v2(emu, target, {}).status_code == 401
    assert _v2(emu, target, {"Authorization": "Bearer nope"}).status_code == 401


def test_bearer_token_from_sdk_works_raw(emu: RunningEmulator) -> None:
    token = emu.client().get_bearer_token()
    r = _v2(emu, "/v2/public/datasets/list?includeOrgAccess=False", {"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def test_unauthenticated_surfaces(emu: RunningEmulator) -> None:
    assert httpx.get(f"{emu.domain}/_emulator/stats", trust_env=False).status_code == 200
    r = httpx.get(f"{emu.domain}/blobs/abc", trust_env=False)
    assert r.status_code == 403 and b"AccessDenied" in r.content


# ---------------------------------------------------------------------------------- key files


def test_key_file_forms(tmp_path: Path) -> None:
    one, two = make_keypair(tmp_path, "one"), make_keypair(tmp_path, "two")
    lines = [Path(f"{one}.pub").read_text(), Path(f"{two}.pub").read_text()]
    multi = tmp_path / "authorized_keys"
    multi.write_text("# team keys\n" + "\n".join(lines) + "\n\n")
    assert len(auth.read_authorized_key_file(multi)) == 2
    (from_private,) = auth.read_authorized_key_file(one)
    assert auth.keyid_from_line(from_private) == auth.keyid_from_line(lines[0])
    bad = tmp_path / "bad"
    bad.write_text("ssh-rsa AAAAB3Nza garbage\n")
    with pytest.raises(auth.KeyFileError):
        auth.read_authorized_key_file(bad)
    with pytest.raises(auth.KeyFileError):
        auth.read_authorized_key_file(tmp_path / "missing")


def test_authenticator_clock_window() -> None:
    class Registry:
        def user_for_keyid(self, keyid: str) -> int | None:
            return 7

        def user_for_token(self, token: str) -> int | None:
            return None

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    now = [2_000_000_000.0]
    checker = auth.Authenticator(Registry(), max_skew_s=300, clock=lambda: now[0])
    headers = sign_v2("GET", "/v2/public/x", b"", key, created=int(now[0]))
    assert checker.v2("GET", "/v2/public/x", headers, b"") == 7
    now[0] += 301
    with pytest.raises(auth.AuthFailure) as info:
        checker.v2("GET", "/v2/public/x", headers, b"")
    assert info.value.kind == "expired"
