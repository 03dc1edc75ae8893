"""Signed URLs: expiry parsing per provider, redaction, and SignedUrlCache (expiry, bulk, single flight)."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime

import pytest

from encordfs.core.counters import Counters
from encordfs.core.urls import SignedUrlCache, parse_expiry, redact
from encordfs.errors import NotFound
from harness.http import FakeClock

T0 = datetime(2024, 1, 1, tzinfo=UTC).timestamp()  # 1704067200


def _cloudfront_policy(epoch: int) -> str:
    doc = {"Statement": [{"Resource": "https://d.example/x", "Condition": {"DateLessThan": {"AWS:EpochTime": epoch}}}]}
    raw = base64.b64encode(json.dumps(doc).encode()).decode()
    return raw.translate(str.maketrans("+=/", "-_~"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # S3 SigV4
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20240101T000000Z"
            "&X-Amz-Expires=3600&X-Amz-Signature=ab",
            T0 + 3600,
        ),
        # S3 SigV2
        ("https://b.s3.amazonaws.com/k?AWSAccessKeyId=AK&Expires=1704070800&Signature=x%2By", T0 + 3600),
        # CloudFront canned policy (the emulator's style)
        ("https://d.cloudfront.net/k?Expires=1704067260&Signature=abc~&Key-Pair-Id=K", T0 + 60),
        ("http://127.0.0.1:8080/blob/x?Expires=1704067260&Signature=00ff", T0 + 60),
        # CloudFront custom policy
        (f"https://d.cloudfront.net/k?Policy={_cloudfront_policy(1704067300)}&Signature=a&Key-Pair-Id=K", T0 + 100),
        # GCS V4
        (
            "https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=c"
            "&X-Goog-Date=20240101T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host&X-Goog-Signature=s",
            T0 + 900,
        ),
        # GCS V2
        ("https://storage.googleapis.com/b/o?GoogleAccessId=a@b&Expires=1704067200&Signature=s", T0),
        # Azure SAS
        ("https://acct.blob.core.windows.net/c/b?sv=2021-08-06&se=2024-01-01T01%3A00%3A00Z&sr=b&sp=r&sig=s", T0 + 3600),
        ("https://acct.blob.core.windows.net/c/b?sv=2021-08-06&se=2024-01-02&sp=r&sig=s", T0 + 86400),
        # unknown or malformed
        ("https://example.com/file.bin", None),
        ("https://example.com/file.bin?token=opaque", None),
        ("https://b.s3.amazonaws.com/k?X-Amz-Date=garbage&X-Amz-Expires=60", None),
        ("https://b/k?Expires=soon", None),
        ("https://acct.blob.core.windows.net/c/b?se=notadate", None),
    ],
)
def test_parse_expiry(url: str, expected: float | None) -> None:
    assert parse_expiry(url) == expected


def test_redact_strips_query_fragment_and_credentials() -> None:
    url = "https://user:pw@b.s3.amazonaws.com:8443/a/b.jpg?X-Amz-Signature=secret#frag"
    assert redact(url) == "https://b.s3.amazonaws.com:8443/a/b.jpg"
    assert "secret" not in redact(url)


class Signer:
    """A plain fake of the bulk signing endpoint: records calls, URLs expire ``ttl_s`` after signing."""

    def __init__(self, clock: FakeClock, ttl_s: float | None = 3600, gate: threading.Event | None = None) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self.gate = gate
        self.calls: list[list[str]] = []
        self.missing: set[str] = set()
        self._lock = threading.Lock()
        self._serial = 0

    def __call__(self, ids: list[str]) -> dict[str, str | None]:
        if self.gate is not None:
            self.gate.wait(5)
        with self._lock:
            self.calls.append(ids)
            self._serial += 1
            serial = self._serial
        out: dict[str, str | None] = {}
        for i in ids:
            if i in self.missing:
                out[i] = None
            elif self.ttl_s is None:
                out[i] = f"https://h/{i}?sig={serial}"
            else:
                out[i] = f"https://h/{i}?Expires={int(self.clock() + self.ttl_s)}&Signature={serial}"
        return out


def test_get_signs_on_miss_then_hits() -> None:
    clock = FakeClock(T0)
    signer = Signer(clock)
    cache = SignedUrlCache(signer, clock=clock)
    url = cache.get("a")
    assert cache.get("a") == url
    assert signer.calls == [["a"]]
    snap = cache.counters.snapshot()
    assert (snap["urls.signs"], snap["urls.urls_signed"], snap["urls.misses"], snap["urls.hits"]) == (1, 1, 1, 1)


def test_resigns_within_margin_of_known_expiry() -> None:
    clock = FakeClock(T0)
    signer = Signer(clock, ttl_s=600)
    cache = SignedUrlCache(signer, clock=clock, margin_s=60)
    first = cache.get("a")
    clock.advance(600 - 61)
    assert cache.is_fresh("a") and cache.get("a") == first
    clock.advance(2)  # now 59 s before expiry: inside the margin
    assert not cache.is_fresh("a") and not cache.is_fresh("never-signed")
    assert cache.get("a") != first
    assert len(signer.calls) == 2
    assert cache.counters.get("urls.resigns_expired") == 1


def test_unknown_expiry_uses_default_ttl() -> None:
    clock = FakeClock(T0)
    signer = Signer(clock, ttl_s=None)
    cache = SignedUrlCache(signer, clock=clock, margin_s=60, default_ttl_s=300)
    first = cache.get("a")
    clock.advance(239)
    assert cache.get("a") == first
    clock.advance(2)
    assert cache.get("a") != first


def test_short_lived_urls_do_not_resign_on_every_call() -> None:
    clock = FakeClock(T0)
    signer = Signer(clock, ttl_s=10)  # shorter than the 60 s margin
    cache = SignedUrlCache(signer, clock=clock, margin_s=60)
    url = cache.get("a")
    clock.advance(4)
    assert cache.get("a") == url
    clock.advance(2)  # past half the lifetime
    assert cache.get("a") != url


def test_put_and_invalidate() -> None:
    clock = FakeClock(T0)
    signer = Signer(clock)
    cache = SignedUrlCache(signer, clock=clock)
    listed = f"https://h/a?Expires={int(T0 + 3600)}&Signature=listing"
    cache.put("a", listed)
    assert cache.get("a") == listed
    assert signer.calls == []
    cache.put("b", f"https://h/b?Expires={int(T0 - 1)}&Signature=old")  # already expired: re-signed on use
    assert "old" not in cache.get("b")
    cache.invalidate("a")
    assert cache.get("a") != listed


def test_unsignable_item_raises_not_found_and_is_not_cached() -> None:
    clock = FakeClock(T0)
    signer = Signer(clock)
    signer.missing.add("gone")
    cache = SignedUrlCache(signer, clock=clock)
    with pytest.raises(NotFound):
        cache.get("gone")
    with pytest.raises(NotFound):
        cache.get("gone")
    assert len(signer.calls) == 2


def test_sign_error_reaches_caller_and_does_not_wedge() -> None:
    clock = FakeClock(T0)
    fail = [True]

    def sign_many(ids: list[str]) -> dict[str, str | None]:
        if fail[0]:
            raise ConnectionError("api down")
        return {i: f"https://h/{i}?Expires={int(T0 + 3600)}&Signature=s" for i in ids}

    cache = SignedUrlCache(sign_many, clock=clock)
    with pytest.raises(ConnectionError):
        cache.get("a")
    fail[0] = False
    assert cache.get("a").startswith("https://h/a")


def test_prime_chunks_at_1000_and_skips_fresh_ids() -> None:
    clock = FakeClock(T0)
    signer = Signer(clock)
    cache = SignedUrlCache(signer, clock=clock, batch=5000)  # capped at the API's 1000
    cache.get("id-7")
    ids = [f"id-{n}" for n in range(2501)] + ["id-3"]  # one fresh, one duplicate
    cache.prime(ids)
    assert [len(call) for call in signer.calls] == [1, 1000, 1000, 500]
    assert "id-7" not in sum(signer.calls[1:], [])
    calls = len(signer.calls)
    for n in range(0, 2501, 250):
        cache.get(f"id-{n}")
    assert len(signer.calls) == calls
    clock.advance(3600)  # everything expired: prime re-signs all
    cache.prime(ids)
    assert [len(call) for call in signer.calls[calls:]] == [1000, 1000, 501]


def test_concurrent_gets_sign_once() -> None:
    clock = FakeClock(T0)
    gate = threading.Event()
    signer = Signer(clock, gate=gate)
    cache = SignedUrlCache(signer, clock=clock)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("a"))) for _ in range(16)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(5)
    assert len(results) == 16 and len(set(results)) == 1
    assert signer.calls == [["a"]]


def test_get_during_prime_waits_for_it() -> None:
    clock = FakeClock(T0)
    gate = threading.Event()
    signer = Signer(clock, gate=gate)
    cache = SignedUrlCache(signer, clock=clock)
    primer = threading.Thread(target=cache.prime, args=(["a", "b"],))
    primer.start()
    while not cache._flights:  # the prime has registered its flight
        threading.Event().wait(0.001)
    getter_result: list[str] = []
    getter = threading.Thread(target=lambda: getter_result.append(cache.get("b")))
    getter.start()
    gate.set()
    primer.join(5)
    getter.join(5)
    assert signer.calls == [["a", "b"]]
    assert getter_result and getter_result[0].startswith("https://h/b")


def test_forced_resign_from_many_threads_signs_once() -> None:
    clock = FakeClock(T0)
    signer = Signer(clock)
    counters = Counters()
    cache = SignedUrlCache(signer, clock=clock, counters=counters)
    source = cache.source("a")
    barrier = threading.Barrier(8)
    results: list[str] = []

    def refused_then_forced() -> None:
        source(False)  # every thread holds the same URL, which the server "refuses"
        barrier.wait()
        results.append(source(True))

    threads = [threading.Thread(target=refused_then_forced) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(signer.calls) == 2  # the first signing, then one forced re-sign
    assert len(results) == 8 and len(set(results)) == 1
    assert counters.get("urls.resigns_forced") == 1


def test_the_url_cache_is_bounded_least_recently_used_out() -> None:
    calls: list[list[str]] = []

    def sign(ids: list[str]) -> dict[str, str | None]:
        calls.append(ids)
        return {i: f"https://b/{i}?Expires=9999999999&Signature=x" for i in ids}

    cache = SignedUrlCache(sign, max_entries=100)
    cache.prime([f"i{n}" for n in range(1000)])
    assert len(cache._entries) == 100
    assert cache.is_fresh("i999") and not cache.is_fresh("i0")
    cache.get("i0")  # evicted: signed again
    assert calls[-1] == ["i0"]


def test_one_refused_id_does_not_fail_the_others() -> None:
    from encordfs.errors import PermissionDenied

    def sign(ids: list[str]) -> dict[str, str | None]:
        if "gone" in ids:
            raise PermissionDenied("one or more items do not exist")  # the real bulk call refuses them all
        return {i: f"https://b/{i}?Expires=9999999999&Signature=x" for i in ids}

    cache = SignedUrlCache(sign)
    ids = [f"i{n}" for n in range(40)]
    cache.prime(ids[:20] + ["gone"] + ids[20:])
    assert all(cache.is_fresh(i) for i in ids) and not cache.is_fresh("gone")
    assert cache.counters.snapshot()["urls.sign_splits"] >= 1
    with pytest.raises(PermissionDenied):
        cache.get("gone")


def test_a_signing_call_that_hangs_is_eio_for_its_waiters_within_wait_s_and_lands_later() -> None:
    import time

    from encordfs.errors import RemoteIOError

    release = threading.Event()

    def slow_sign(ids: list[str]) -> dict[str, str | None]:
        release.wait(10)
        return {i: f"https://b/{i}?Expires=9999999999&Signature=x" for i in ids}

    cache = SignedUrlCache(slow_sign, wait_s=0.3)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            cache.get("a")
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert time.monotonic() - started < 2 and len(errors) == 3
    assert all(isinstance(e, RemoteIOError) for e in errors)
    assert cache.counters.snapshot()["urls.sign_timeouts"] == 3
    release.set()
    deadline = time.monotonic() + 5
    while not cache.is_fresh("a") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.get("a").startswith("https://b/a")  # the slow call landed; no second signing call
