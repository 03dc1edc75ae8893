"""Faults: the emulator injects them as specified, the read path survives them, and a mount returns
exact bytes under a mix of them (the short form of ``scripts/soak``'s bytes and concurrency suites).

Emulator-side tests run an in-process ``Emulator`` over a synthetic dataset (bytes known by formula)
and speak raw HTTP to it, so each fault is seen exactly as a client sees it; fetcher tests drive the
real ``HttpFetcher`` against the same server.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from encordfs.core.counters import Counters
from encordfs.core.fetch import HttpFetcher
from encordfs.core.retry import READ_RETRY, RetryPolicy
from encordfs.emulator import synthetic
from encordfs.emulator.faults import parse_rule_text
from encordfs.emulator.server import Emulator
from encordfs.errors import RemoteIOError
from harness import scenarios as suites

SIZE = 300_000


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = Emulator(tmp_path_factory.mktemp("faults-emu"))
    ds_hash = emulator.store.ingest_synthetic("syn", 3, SIZE)
    emulator.start()
    emulator.seed = f"{ds_hash.replace('-', '')[:12]}.1"  # type: ignore[attr-defined]
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(autouse=True)
def clean(emu: Emulator) -> Iterator[None]:
    _admin(emu, "POST", "reset")
    yield
    _admin(emu, "POST", "reset")


def _admin(emu: Emulator, method: str, path: str, body: Any = None) -> Any:
    r = httpx.request(method, f"{emu.domain}/_emulator/{path}", json=body, trust_env=False, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _url(emu: Emulator) -> str:
    return emu.sign_blob(synthetic.blob_key(emu.seed, SIZE))  # type: ignore[attr-defined]


def _expected(emu: Emulator, start: int = 0, length: int = SIZE) -> bytes:
    return synthetic.read(emu.seed, SIZE, start, length)  # type: ignore[attr-defined]


def _get(url: str, first: int, last: int) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    conn.request("GET", f"{parts.path}?{parts.query}", headers={"Range": f"bytes={first}-{last}"})
    return conn.getresponse(), conn


def _read_until_error(response: http.client.HTTPResponse) -> tuple[bytes, BaseException | None]:
    got = bytearray()
    try:
        while chunk := response.read(65536):
            got += chunk
    except (OSError, http.client.HTTPException) as exc:
        return bytes(got), exc
    return bytes(got), None


# ---------------------------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"endpoint": "blob.get", "status": 503, "drop_after_bytes": 10}, "one action"),
        ({"endpoint": "blob.get", "drop_after_bytes": -1}, ">= 0"),
        ({"endpoint": "blob.get", "stall_after_bytes": 5}, "needs 'stall_ms'"),
        ({"endpoint": "blob.get", "colour": "red"}, "unknown fault rule field"),
        ({"endpoint": "blob.get", "rate": 2}, "within 0..1"),
    ],
)
def test_bad_rules_are_400(emu: Emulator, raw: dict[str, Any], message: str) -> None:
    r = httpx.post(f"{emu.domain}/_emulator/faults", json=raw, trust_env=False)
    assert r.status_code == 400 and message in r.text
    with pytest.raises(ValueError, match=message):
        parse_rule_text(json.dumps(raw))


def test_cli_fault_flag_and_bad_rule(tmp_path: Path) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "encordfs.emulator", "--data-dir", str(tmp_path / "d"), "--fault", "{oops"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--fault" in bad.stderr and "Traceback" not in bad.stderr
    rule = {"endpoint": "blob.get", "truncate_after_bytes": 100, "count": 3}
    with suites.RunningEmulator(
        ["--fault", json.dumps(rule), "--clock-skew", "-30"], data_dir=tmp_path / "e"
    ) as running:
        rules = httpx.get(f"{running.domain}/_emulator/faults", trust_env=False).json()
        settings = httpx.get(f"{running.domain}/_emulator/settings", trust_env=False).json()
        assert [(r["truncate_after_bytes"], r["count"]) for r in rules] == [(100, 3)]
        assert settings == {"url_ttl_s": None, "clock_skew_s": -30.0}


# ---------------------------------------------------------------------------------------------- body faults


def test_drop_after_bytes_resets_mid_body(emu: Emulator) -> None:
    _admin(emu, "POST", "faults", {"endpoint": "blob.get", "drop_after_bytes": 70_000, "count": 1})
    response, conn = _get(_url(emu), 1000, 200_999)
    assert response.status == 206 and response.getheader("Content-Length") == "200000"
    got, error = _read_until_error(response)
    conn.close()
    # An RST discards what the client had not read yet: a prefix of the 70,000 bytes arrives, then the reset.
    assert isinstance(error, ConnectionResetError) and len(got) <= 70_000 and got == _expected(emu, 1000, len(got))
    stats = _admin(emu, "GET", "stats")
    assert stats["faults.drop"] == 1 and stats["faults.injected"] == 1
    response, conn = _get(_url(emu), 1000, 200_999)  # count exhausted: whole again
    assert response.read() == _expected(emu, 1000, 200_000)
    conn.close()


def test_truncate_promises_more_than_it_sends(emu: Emulator) -> None:
    _admin(emu, "POST", "faults", {"endpoint": "blob.get", "truncate_after_bytes": 12_345, "count": 1})
    response, conn = _get(_url(emu), 0, SIZE - 1)
    assert response.getheader("Content-Length") == str(SIZE)
    got, error = _read_until_error(response)
    conn.close()
    assert error is None and got == _expected(emu, 0, 12_345)  # then a clean end of stream: a short body
    # Clamped: a cut past the body's end still cuts it (every firing is a fault).
    _admin(emu, "POST", "faults", {"endpoint": "blob.get", "truncate_after_bytes": 10**9, "count": 1})
    response, conn = _get(_url(emu), 0, 99)
    got, error = _read_until_error(response)
    conn.close()
    assert error is None and got == _expected(emu, 0, 99)
    assert _admin(emu, "GET", "stats")["faults.truncate"] == 2


def test_stall_pauses_then_completes(emu: Emulator) -> None:
    _admin(emu, "POST", "faults", {"endpoint": "blob.get", "stall_ms": 600, "stall_after_bytes": 5000, "count": 1})
    started = time.monotonic()
    response, conn = _get(_url(emu), 0, SIZE - 1)
    assert response.read() == _expected(emu)
    conn.close()
    assert time.monotonic() - started >= 0.6
    assert _admin(emu, "GET", "stats")["faults.stall"] == 1


# ---------------------------------------------------------------------------------------------- settings


def _expires(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["Expires"][0])


def test_runtime_url_ttl_and_clock_skew_and_reset(emu: Emulator) -> None:
    assert _admin(emu, "POST", "settings", {"url_ttl_s": 1}) == {"url_ttl_s": 1, "clock_skew_s": 0.0}
    url = _url(emu)
    assert _expires(url) - time.time() <= 2.0  # the TTL, rounded up to a whole second
    assert httpx.get(url, trust_env=False).status_code == 200
    time.sleep(2.2)
    assert httpx.get(url, trust_env=False).status_code == 403  # expired, by the emulator's clock
    # Skew: the emulator's now runs an hour ahead. A URL signed before (valid for an hour in real
    # time) is expired in the emulator's time; new URLs say an Expires an hour off the client's clock.
    _admin(emu, "POST", "settings", {"url_ttl_s": None})
    before = _url(emu)
    _admin(emu, "POST", "settings", {"clock_skew_s": 3700})
    assert httpx.get(before, trust_env=False).status_code == 403
    skewed = _url(emu)
    assert _expires(skewed) - time.time() > 3600 + 3000 and httpx.get(skewed, trust_env=False).status_code == 200
    _admin(emu, "POST", "faults", {"endpoint": "blob.get", "status": 503})
    _admin(emu, "POST", "reset")
    assert _admin(emu, "GET", "settings") == {"url_ttl_s": None, "clock_skew_s": 0.0}
    assert _admin(emu, "GET", "faults") == []
    assert httpx.get(before, trust_env=False).status_code == 200


def test_bad_settings_are_400(emu: Emulator) -> None:
    for body in ({"url_ttl_s": 0}, {"url_ttl_s": "x"}, {"colour": 1}, [1]):
        assert httpx.post(f"{emu.domain}/_emulator/settings", json=body, trust_env=False).status_code == 400


# ---------------------------------------------------------------------------------------------- the fetcher


def _fetcher(http_client: str, counters: Counters, **kw: Any) -> HttpFetcher:
    policy = RetryPolicy(
        base_s=0.01, cap_s=0.05, max_retry_after_s=2.0, max_attempts=10, budget_s=kw.pop("budget_s", 10.0)
    )
    return HttpFetcher(http_client, counters=counters, retry=policy, **kw)


def test_fetcher_survives_drops_truncations_and_stalls(emu: Emulator, http_client: str) -> None:
    counters = Counters()
    fetcher = _fetcher(http_client, counters, stall_timeout_s=0.5)
    _admin(
        emu,
        "POST",
        "faults",
        [
            {"endpoint": "blob.get", "drop_after_bytes": 1000, "count": 1},
            {"endpoint": "blob.get", "truncate_after_bytes": 2000, "count": 1},
            {"endpoint": "blob.get", "stall_ms": 3000, "count": 1},
            {"endpoint": "blob.get", "status": 429, "retry_after": 1, "count": 1},
        ],
    )
    url = _url(emu)
    started = time.monotonic()
    try:
        assert fetcher.fetch(lambda force: url, 10, 250_010) == _expected(emu, 10, 250_000)
    finally:
        fetcher.close()
    took = time.monotonic() - started
    assert counters.get("fetch.retries") == 4 and counters.get("fetch.stalls") == 1
    assert 1.0 <= took < 3.0  # Retry-After 1 s honoured; the 3 s stall abandoned after 0.5 s
    assert _admin(emu, "GET", "stats")["faults.injected"] == 4


def test_endless_stall_is_eio_within_budget_not_a_hang(emu: Emulator, http_client: str) -> None:
    counters = Counters()
    fetcher = _fetcher(http_client, counters, stall_timeout_s=0.4, budget_s=1.5)
    _admin(emu, "POST", "faults", {"endpoint": "blob.get", "stall_ms": 4000, "stall_after_bytes": 10})
    url = _url(emu)
    started = time.monotonic()
    try:
        with pytest.raises(RemoteIOError) as info:
            fetcher.fetch(lambda force: url, 0, SIZE)
    finally:
        fetcher.close()
    assert time.monotonic() - started < 1.5 + 0.4 + 0.3
    assert info.value.errno == 5 and "Signature" not in str(info.value)
    assert counters.get("fetch.stalls") >= 2


def test_expired_url_during_retries_is_replaced_not_refused_twice(emu: Emulator, http_client: str) -> None:
    """1-second URLs and a retry storm: each retry asks the source again, so no URL is refused twice."""
    _admin(emu, "POST", "settings", {"url_ttl_s": 1})
    _admin(emu, "POST", "faults", {"endpoint": "blob.get", "status": 503, "count": 6})
    counters = Counters()
    calls: list[bool] = []
    current = {"url": _url(emu), "at": time.time()}

    def source(force: bool) -> str:  # a cache: re-signs when forced or when the URL is half gone
        calls.append(force)
        if force or time.time() - current["at"] > 0.5:  # type: ignore[operator]
            current.update(url=_url(emu), at=time.time())
        return str(current["url"])

    fetcher = HttpFetcher(
        http_client,
        counters=counters,
        retry=RetryPolicy(base_s=0.5, cap_s=0.5, rand=lambda: 0.999, max_attempts=10, budget_s=10),
    )
    try:
        assert fetcher.fetch(source, 0, 1000) == _expected(emu, 0, 1000)
    finally:
        fetcher.close()
    assert counters.get("fetch.retries") == 6 and calls == [False] * 7  # no URL was refused


def test_retry_policy_budgets() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=4.0, max_attempts=3, budget_s=10.0, rand=lambda: 0.5)
    assert [policy.next_delay_s(n, 0.0) for n in (1, 2, 3)] == [0.5, 1.0, None]
    assert policy.next_delay_s(1, 9.6) is None  # the wait would end past the budget
    assert policy.next_delay_s(1, 0.0, retry_after_s=3.0) == 3.0
    assert RetryPolicy(rand=lambda: 0.5).next_delay_s(10_000, 1e9) == 30.0  # unbounded: the write queue's
    assert READ_RETRY.budget_s == 30.0 and READ_RETRY.max_attempts == 10


# ---------------------------------------------------------------------------------------------- through a mount


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[suites.Workspace]:
    spec = suites.WorkspaceSpec(large_rows=6, large_bytes=3 * suites.MiB + 4321, small_rows=30, real_files=6)
    with suites.Workspace(tmp_path_factory.mktemp("soak-ws"), spec) as ws:
        yield ws


@pytest.mark.usefixtures("binding")
def test_bytes_through_a_mount_under_mixed_faults_are_exact(workspace: suites.Workspace) -> None:
    figures = suites.bytes_suite(workspace, total_bytes=20 * suites.MiB, fault_scale=3.0)
    assert figures["bytes_read"] >= 20 * suites.MiB
    assert figures["wrong_bytes"] == 0 and figures["read_errors"] == 0 and figures["hangs"] == 0, figures
    assert figures["faults_injected"] > 0, figures


@pytest.mark.usefixtures("binding")
def test_concurrent_readers_writers_refreshes(workspace: suites.Workspace) -> None:
    figures = suites.concurrency_suite(workspace, duration_s=4.0, threads=16)
    assert figures["hangs"] == 0 and figures["op_errors"] == 0, figures
    assert figures["ops"]["read"] > 0 and figures["ops"]["setxattr"] > 0 and figures["ops"]["refresh"] > 0, figures
    assert 0 < figures["max_rss_mb"] < suites.RSS_LIMIT_MB


def test_a_push_held_past_the_timeout_does_not_leave_a_stale_value(tmp_path: Path) -> None:
    with suites.Workspace(
        tmp_path, suites.WorkspaceSpec(large_rows=1, large_bytes=1000, small_rows=3, real_files=1)
    ) as ws:
        figures = suites.stale_suite(ws, rounds=1, files_n=2)
    assert figures["stale_overwrites"] == 0, figures
    assert figures["stale_seen"] >= 1 and figures["reasserts"] >= 1, figures  # the race did happen
