"""Synthetic datasets (``--generate TITLE:ROWS[:BYTES]``): deterministic, Range-correct bytes that are
never stored, rows the real SDK sees, idempotent restarts, and a streamed load in bounded memory."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from encordfs.emulator import synthetic
from encordfs.emulator.server import Emulator
from harness.emulator import RunningEmulator


def test_spec_parsing() -> None:
    assert synthetic.parse_spec("big:1000") == synthetic.GenerateSpec("big", 1000, synthetic.DEFAULT_SIZE_BYTES)
    assert synthetic.parse_spec("big:10:4096") == synthetic.GenerateSpec("big", 10, 4096)
    assert synthetic.parse_spec("a:b:10:5") == synthetic.GenerateSpec("a:b", 10, 5)
    for bad in ("big", ":10", "big:x"):
        with pytest.raises(ValueError):
            synthetic.parse_spec(bad)


def test_bytes_are_deterministic_and_range_consistent() -> None:
    size = 3 * synthetic.BLOCK_BYTES + 123
    whole = synthetic.read("seed.1", size, 0, size)
    assert len(whole) == size and whole == synthetic.read("seed.1", size, 0, size)
    assert whole != synthetic.read("seed.2", size, 0, size)
    for start, length in [
        (0, 1),
        (1, 10),
        (synthetic.BLOCK_BYTES - 3, 7),
        (size - 5, 100),
        (2 * synthetic.BLOCK_BYTES, 1 << 20),
    ]:
        assert synthetic.read("seed.1", size, start, length) == whole[start : start + length]
    assert synthetic.read("seed.1", size, size, 10) == b""


def test_sdk_sees_rows_and_blobs_are_served_by_range(tmp_path: Path) -> None:
    with Emulator(tmp_path / "emu") as emu:
        ds_hash = emu.store.ingest_synthetic("synth", 25, 100_000)
        assert emu.key_file is not None
        from encord import EncordUserClient

        client = EncordUserClient.create_with_ssh_private_key(ssh_private_key_path=str(emu.key_file), domain=emu.domain)
        from encord.orm.dataset import DatasetAccessSettings

        dataset = client.get_dataset(ds_hash, dataset_access_settings=DatasetAccessSettings(fetch_client_metadata=True))
        rows = dataset.data_rows
        assert [r.title for r in rows[:2]] == ["img_0000001.jpg", "img_0000002.jpg"] and len(rows) == 25
        first = rows[0]
        assert first.file_type == "image/jpeg" and first.file_size == 100_000 and first.width and first.height
        assert first.client_metadata == {"i": 1, "split": "train"}
        item = client.get_storage_item(first.backing_item_uuid, sign_url=True)
        url = item.get_signed_url()
        assert url is not None
        whole = httpx.get(url).content
        assert len(whole) == 100_000
        part = httpx.get(url, headers={"Range": "bytes=70000-70099"})
        assert part.status_code == 206 and part.content == whole[70000:70100]
        assert part.headers["Content-Range"] == "bytes 70000-70099/100000"
        assert httpx.get(url, headers={"Range": "bytes=200000-"}).status_code == 416
        assert list((tmp_path / "emu" / "blobs").iterdir()) == []  # nothing stored
        second = httpx.get(client.get_storage_item(rows[1].backing_item_uuid, sign_url=True).get_signed_url()).content
        assert hashlib.sha256(second).digest() != hashlib.sha256(whole).digest()


def test_cli_generate_is_idempotent_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    hashes = []
    for _ in range(2):
        with RunningEmulator(["--generate", "gen:30:10", "--generate", "other:5"], data_dir=data_dir) as emu:
            client = emu.client()
            datasets = {d["dataset"].title: d["dataset"] for d in client.get_datasets()}
            assert set(datasets) >= {"gen", "other"}
            hashes.append(str(datasets["gen"].dataset_hash))
            rows = client.get_dataset(hashes[-1]).data_rows
            assert len(rows) == 30 and rows[-1].title == "img_0000030.jpg" and rows[-1].file_size == 10
    assert hashes[0] == hashes[1]


def test_bad_generate_spec_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "encordfs.emulator", "--data-dir", str(tmp_path), "--generate", "nonumbers"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2 and "TITLE:ROWS" in done.stderr


_LOAD_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from encordfs.backend.sdk import SdkBackend
    domain, key_file, title = sys.argv[1:4]
    backend = SdkBackend(domain, open(key_file).read())
    uid = next(d.uid for d in backend.list_datasets() if d.title == title)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    count = sum(1 for _ in backend.iter_rows(uid))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": count, "growth_kib": after - before, "peak_kib": after}))
    """
)


def test_streamed_load_of_200k_rows_in_bounded_memory() -> None:
    with RunningEmulator(["--generate", "load200k:200000"]) as emu:
        assert emu.key_file is not None
        done = subprocess.run(
            [sys.executable, "-c", _LOAD_SCRIPT, emu.domain, str(emu.key_file), "load200k"],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout)
    assert result["rows"] == 200_000
    assert result["growth_kib"] < 150 * 1024, result  # the SDK's get_dataset grows by ~700 MB here


def test_streamed_rows_equal_the_sdk_path(sample_emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The streaming loader and the SDK's ``get_dataset`` give the same records, and the same errors."""
    from encordfs import errors
    from encordfs.backend import sdk

    assert sample_emulator.key_file is not None
    backend = sdk.SdkBackend(sample_emulator.domain, sample_emulator.key_file.read_text())
    for dataset in backend.list_datasets():
        monkeypatch.setenv(sdk.LOAD_MODE_ENV, "stream")
        streamed = list(backend.iter_rows(dataset.uid))
        monkeypatch.setenv(sdk.LOAD_MODE_ENV, "sdk")
        assert streamed == list(backend.iter_rows(dataset.uid)), dataset.title
    for mode in ("stream", "sdk"):
        monkeypatch.setenv(sdk.LOAD_MODE_ENV, mode)
        with pytest.raises(errors.NotFound):
            list(backend.iter_rows("00000000-0000-4000-8000-000000000000"))
