"""The fetcher's HTTP contract, over both transports (libcurl and httpx): statuses, ranges, redirects,
keep-alive, TLS trust, the fallback when pycurl is missing, and no secret in any message or log line.

(The read pipeline's tests in ``test_reader.py`` and the fault tests in ``test_faults.py`` run over
both transports too; this file holds what is about HTTP itself.)
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from encordfs.core import fetch
from encordfs.core.counters import Counters
from encordfs.core.fetch import HttpFetcher, check_ca_file
from encordfs.core.retry import RetryPolicy
from encordfs.errors import InvalidValue, PermissionDenied, RemoteIOError, Stale
from harness.http import ByteServer
from harness.tls import Pki, make_pki, server_context

KiB = 1024
DATA = random.Random(7).randbytes(300 * KiB)
SECRETS = ("Signature=", "Expires=", "token=", "sig=")


@pytest.fixture
def server() -> Iterator[ByteServer]:
    with ByteServer().running() as running:
        running.add("a", DATA)
        yield running


@pytest.fixture
def counters() -> Counters:
    return Counters()


@pytest.fixture
def make_fetcher(http_client: str, counters: Counters) -> Iterator[Callable[..., HttpFetcher]]:
    made: list[HttpFetcher] = []

    def make(**kw: object) -> HttpFetcher:
        kw.setdefault(
            "retry", RetryPolicy(base_s=0.001, cap_s=0.01, max_retry_after_s=2.0, max_attempts=10, budget_s=5)
        )
        fetcher = HttpFetcher(http_client, counters=counters, **kw)  # type: ignore[arg-type]
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        fetcher.close()


def source(server: ByteServer, name: str = "a") -> Callable[[bool], str]:
    return lambda force_resign: server.sign(name)


# ---------------------------------------------------------------------------------------------- statuses


def test_200_at_zero_is_accepted_and_cut_to_the_range(
    server: ByteServer, make_fetcher: Callable[..., HttpFetcher]
) -> None:
    server.ignore_range = True  # a server without range support: 200 and the whole object
    fetcher = make_fetcher()
    for _ in range(3):  # the connection of a cut 200 is dropped, the next GET opens a new one
        assert fetcher.fetch(source(server), 0, 1000) == DATA[:1000]
    with pytest.raises(RemoteIOError, match="ignored the Range header"):
        fetcher.fetch(source(server), 10, 1000)


def test_200_shorter_than_asked_is_stale(server: ByteServer, make_fetcher: Callable[..., HttpFetcher]) -> None:
    server.ignore_range = True
    with pytest.raises(Stale):
        make_fetcher().fetch(source(server), 0, len(DATA) + 10)


def test_content_range_is_checked(server: ByteServer, make_fetcher: Callable[..., HttpFetcher]) -> None:
    fetcher = make_fetcher()

    def shift(status: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if status == 206:
            first, last = headers["Content-Range"].split()[1].split("/")[0].split("-")
            headers["Content-Range"] = f"bytes {int(first) + 1}-{last}/{len(DATA)}"
        return status, headers, body

    server.rewrite = shift
    with pytest.raises(RemoteIOError, match="unexpected Content-Range"):
        fetcher.fetch(source(server), 100, 200)
    server.rewrite = lambda status, headers, body: (206, {"Content-Range": f"bytes 100-149/{len(DATA)}"}, body[:50])
    with pytest.raises(Stale, match="shorter"):
        fetcher.fetch(source(server), 100, 200)
    server.rewrite = lambda status, headers, body: (206, {}, body)
    with pytest.raises(RemoteIOError, match="unexpected Content-Range"):
        fetcher.fetch(source(server), 100, 200)


@pytest.mark.parametrize("status", [404, 410, 412, 416])
def test_gone_is_stale_without_retry(
    server: ByteServer, make_fetcher: Callable[..., HttpFetcher], counters: Counters, status: int
) -> None:
    server.inject(status)
    with pytest.raises(Stale, match=f"HTTP {status}"):
        make_fetcher().fetch(source(server), 0, 100)
    assert len(server.hits("a")) == 1 and counters.get("fetch.retries") == 0


def test_past_the_end_is_stale(server: ByteServer, make_fetcher: Callable[..., HttpFetcher]) -> None:
    with pytest.raises(Stale):
        make_fetcher().fetch(source(server), len(DATA) + 1, len(DATA) + 100)  # a real 416


def test_other_statuses_are_eio_without_retry(
    server: ByteServer, make_fetcher: Callable[..., HttpFetcher], counters: Counters
) -> None:
    server.inject(501)
    with pytest.raises(RemoteIOError, match="HTTP 501"):
        make_fetcher().fetch(source(server), 0, 100)
    assert counters.get("fetch.retries") == 0


def test_refused_once_is_resigned_and_read(
    server: ByteServer, make_fetcher: Callable[..., HttpFetcher], counters: Counters
) -> None:
    server.inject(403)
    calls: list[bool] = []

    def src(force: bool) -> str:
        calls.append(force)
        return server.sign("a")

    assert make_fetcher().fetch(src, 5, 5005) == DATA[5:5005]
    assert calls == [False, True] and counters.get("fetch.resigns_after_error") == 1


def test_refused_400_twice_is_eio(server: ByteServer, make_fetcher: Callable[..., HttpFetcher]) -> None:
    server.inject(400, 400)
    with pytest.raises(RemoteIOError, match="refused twice"):
        make_fetcher().fetch(source(server), 0, 100)


def test_retry_after_is_honoured(server: ByteServer, http_client: str, counters: Counters) -> None:
    sleeps: list[float] = []
    server.inject(429, 503)
    server.rewrite = lambda status, headers, body: (
        (status, {**headers, "Retry-After": "1"}, body) if status in (429, 503) else (status, headers, body)
    )
    policy = RetryPolicy(base_s=0.001, cap_s=0.01, max_retry_after_s=5.0, max_attempts=10, budget_s=30, rand=lambda: 0)
    fetcher = HttpFetcher(http_client, retry=policy, counters=counters, sleep=sleeps.append)
    try:
        assert fetcher.fetch(source(server), 0, 100) == DATA[:100]
    finally:
        fetcher.close()
    assert sleeps == [1.0, 1.0] and counters.get("fetch.retries") == 2


def test_body_shorter_than_announced_is_retried(
    server: ByteServer, make_fetcher: Callable[..., HttpFetcher], counters: Counters
) -> None:
    cut = {"left": 2}

    def truncate(status: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if status == 206 and cut["left"]:
            cut["left"] -= 1
            return status, {**headers, "Content-Length": str(len(body))}, body[: len(body) // 2]
        return status, headers, body

    server.rewrite = truncate
    assert make_fetcher().fetch(source(server), 1000, 101_000) == DATA[1000:101_000]
    assert counters.get("fetch.retries") == 2


# ---------------------------------------------------------------------------------------------- redirects, keep-alive


def test_redirects_are_followed_up_to_five(
    server: ByteServer, make_fetcher: Callable[..., HttpFetcher], counters: Counters
) -> None:
    fetcher = make_fetcher()
    assert fetcher.fetch(lambda force: server.redirect(server.sign("a"), 5), 10, 20_010) == DATA[10:20_010]
    with pytest.raises(RemoteIOError) as info:
        fetcher.fetch(lambda force: server.redirect(server.sign("a"), 6), 0, 100)
    assert "redirect" in str(info.value).lower() and "?" not in str(info.value)
    assert counters.get("fetch.retries") == 0  # a redirect loop is not retried


def test_connections_are_kept_across_requests_and_error_answers(
    server: ByteServer, make_fetcher: Callable[..., HttpFetcher]
) -> None:
    fetcher = make_fetcher()
    for n in range(30):
        if n % 10 == 5:
            server.inject(503, 403)  # small error bodies are drained, so the connection stays
        start = n * 1000
        assert fetcher.fetch(source(server), start, start + 5000) == DATA[start : start + 5000]
    assert server.connections == 1
    assert {h.accept_encoding for h in server.hits("a")} == {"identity"}  # bytes as stored, never compressed


def test_closed_fetcher_fails_with_eio(server: ByteServer, make_fetcher: Callable[..., HttpFetcher]) -> None:
    fetcher = make_fetcher()
    assert fetcher.fetch(source(server), 0, 10) == DATA[:10]
    fetcher.close()
    with pytest.raises(RemoteIOError):
        fetcher.fetch(source(server), 0, 10)


def test_not_http_is_eio_at_once(make_fetcher: Callable[..., HttpFetcher], counters: Counters) -> None:
    with pytest.raises(RemoteIOError):
        make_fetcher().fetch(lambda force: "ftp://127.0.0.1/x?Signature=abc", 0, 10)
    assert counters.get("fetch.retries") == 0


def test_concurrent_fetches_on_one_fetcher(server: ByteServer, make_fetcher: Callable[..., HttpFetcher]) -> None:
    import threading

    fetcher = make_fetcher(max_connections=4)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(40):
                start = rng.randrange(len(DATA) - 1)
                end = min(len(DATA), start + rng.randrange(1, 64 * KiB))
                assert fetcher.fetch(source(server), start, end) == DATA[start:end]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:2]
    assert server.connections <= 4 + 1  # at most max_connections at once (one more if one was dropped)


# ---------------------------------------------------------------------------------------------- redaction


def test_no_secret_in_any_message_or_log_line(
    server: ByteServer, make_fetcher: Callable[..., HttpFetcher], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for library in ("httpx", "httpcore"):  # they log whole URLs: a mount holds them at ERROR (logs.setup)
        caplog.set_level(logging.ERROR, logger=library)
    fetcher = make_fetcher(retry=RetryPolicy(base_s=0.001, cap_s=0.01, max_attempts=3, budget_s=2), stall_timeout_s=0.3)
    forged = f"{server.base_url}/blob/a?Expires=9999999999&Signature=deadbeef&token=s3cr3t"
    failures: list[str] = []
    cases: list[tuple[Callable[[bool], str], Callable[[], None]]] = [
        (lambda force: forged, lambda: None),  # refused twice
        (source(server), lambda: server.inject(500, 500, 500, 500)),  # gave up after retries
        (source(server), lambda: server.inject(404)),
        (lambda force: "http://127.0.0.1:9/blob/a?Signature=deadbeef&sig=1", lambda: None),  # unreachable
        (lambda force: server.redirect(forged, 7), lambda: None),  # redirect loop
    ]
    for src, arm in cases:
        arm()
        with pytest.raises((PermissionDenied, RemoteIOError, Stale)) as info:
            fetcher.fetch(src, 0, 100)
        failures.append(str(info.value))
    text = "\n".join(failures + [r.getMessage() for r in caplog.records])
    for secret in (*SECRETS, "deadbeef", "s3cr3t"):
        assert secret not in text, (secret, text)


# ---------------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[ByteServer]:
    with ByteServer(tls=server_context(pki)).running() as running:
        running.add("a", DATA)
        yield running


def test_tls_verified_with_the_ca_file(
    tls_server: ByteServer, pki: Pki, make_fetcher: Callable[..., HttpFetcher]
) -> None:
    assert tls_server.base_url.startswith("https://")
    fetcher = make_fetcher(ca_file=pki.ca_file)
    for n in range(5):
        assert fetcher.fetch(source(tls_server), n * 7000, n * 7000 + 50_000) == DATA[n * 7000 : n * 7000 + 50_000]
    assert tls_server.connections == 1  # kept, like plain HTTP


@pytest.mark.parametrize("trust", ["default store", "another CA"])
def test_tls_untrusted_is_eio_at_once_with_the_reason(
    tls_server: ByteServer, tmp_path: Path, make_fetcher: Callable[..., HttpFetcher], counters: Counters, trust: str
) -> None:
    ca_file = make_pki(tmp_path / "other").ca_file if trust == "another CA" else None
    fetcher = make_fetcher(ca_file=ca_file)
    started = time.monotonic()
    with pytest.raises(RemoteIOError) as info:
        fetcher.fetch(source(tls_server), 0, 100)
    assert time.monotonic() - started < 2.0 and counters.get("fetch.retries") == 0  # not retried
    message = str(info.value)  # what the FUSE adapter logs (test_tls.py checks the mount's log)
    assert info.value.errno == 5 and message.startswith("TLS: ") and "certificate" in message.lower(), message
    assert tls_server.hits() == []  # nothing was sent over the untrusted connection
    assert not any(secret in message for secret in SECRETS)


def test_check_ca_file(tmp_path: Path, pki: Pki) -> None:
    assert check_ca_file(pki.ca_file) == str(pki.ca_file.resolve())
    (tmp_path / "empty.pem").write_text("")
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    for bad, words in [
        (tmp_path / "absent.pem", "does not exist"),
        (tmp_path / "empty.pem", "no usable PEM"),
        (tmp_path / "junk.pem", "no usable PEM"),
        (tmp_path, "directory"),
    ]:
        with pytest.raises(InvalidValue, match=words):
            check_ca_file(bad)
    with pytest.raises(InvalidValue):
        HttpFetcher(ca_file=tmp_path / "absent.pem")


# ---------------------------------------------------------------------------------------------- choosing


def test_unknown_http_client_is_invalid() -> None:
    with pytest.raises(InvalidValue, match="--http-client"):
        HttpFetcher("urllib")


def test_without_pycurl_curl_falls_back_to_httpx_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, server: ByteServer
) -> None:
    monkeypatch.setitem(sys.modules, "pycurl", None)  # import pycurl -> ImportError
    monkeypatch.delitem(sys.modules, "encordfs.core.curl_transport", raising=False)
    monkeypatch.setattr(fetch, "_fallback_warned", False)
    caplog.set_level(logging.WARNING)
    fetchers = [HttpFetcher("curl") for _ in range(3)]
    try:
        assert [f.transport.name for f in fetchers] == ["httpx"] * 3
        assert fetchers[0].fetch(source(server), 0, 100) == DATA[:100]
    finally:
        for f in fetchers:
            f.close()
    warned = [r.getMessage() for r in caplog.records if "pycurl" in r.getMessage()]
    assert len(warned) == 1 and "httpx" in warned[0], warned


def test_default_trust_is_openssls_store_and_follows_ssl_cert_file(
    tls_server: ByteServer, pki: Pki, make_fetcher: Callable[..., HttpFetcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without ca_file both transports use OpenSSL's default store, which SSL_CERT_FILE replaces (for
    # libcurl this also proves the wheel's built-in CA path, a CentOS one, is not what is used).
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    assert make_fetcher().fetch(source(tls_server), 0, 1000) == DATA[:1000]


# ---------------------------------------------------------------------------------------------- proxies, closing


def test_proxy_from_the_environment(
    server: ByteServer, make_fetcher: Callable[..., HttpFetcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The byte server plays the proxy too: it answers absolute-form requests for any host.
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", server.base_url)
    fetcher = make_fetcher()
    url = server.sign("a").replace(server.base_url, "http://blob.invalid")  # resolvable by the proxy only
    assert fetcher.fetch(lambda force: url, 100, 5100) == DATA[100:5100]
    assert [h.status for h in server.hits("a")] == [206]


def test_close_while_a_fetch_waits_ends_it(
    server: ByteServer, make_fetcher: Callable[..., HttpFetcher], http_client: str
) -> None:
    """libcurl's loop fails the transfers in flight at once; httpx's ends at its timeout (1 s here).
    Either way the caller gets EIO, never a hang (a mount closes its reader, which waits, first)."""
    import threading

    gate = threading.Event()

    def hold(status: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        gate.wait(10)  # the server sits on the request until the test lets go
        return status, headers, body

    server.rewrite = hold
    fetcher = make_fetcher(retry=RetryPolicy(base_s=0.001, cap_s=0.01, max_attempts=10, budget_s=1))
    outcome: list[BaseException | bytes] = []

    def run() -> None:
        try:
            outcome.append(fetcher.fetch(source(server), 0, 100))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=run)
    reader.start()
    time.sleep(0.3)
    started = time.monotonic()
    fetcher.close()
    reader.join(5)
    gate.set()
    assert not reader.is_alive() and time.monotonic() - started < (0.5 if http_client == "curl" else 2)
    assert len(outcome) == 1 and isinstance(outcome[0], RemoteIOError), outcome


def test_non_ascii_names_are_fetched(server: ByteServer, make_fetcher: Callable[..., HttpFetcher]) -> None:
    server.add("città é 東京.jpg", DATA[:5000])
    url = server.sign("città é 東京.jpg").replace("%C3%A0", "à")  # an IRI-style URL, as a store might hand out
    assert not url.isascii()
    assert make_fetcher().fetch(lambda force: url, 0, 5000) == DATA[:5000]


# ---------------------------------------------------------------------------------------------- object size


def test_an_object_that_grew_or_shrank_is_stale_not_cut(
    server: ByteServer, make_fetcher: Callable[..., HttpFetcher]
) -> None:
    fetcher = make_fetcher()
    out = memoryview(bytearray(1000))
    fetcher.fetch_into(source(server), 0, out, total=len(DATA))  # the size the catalog knows: fine
    assert bytes(out) == DATA[:1000]
    with pytest.raises(Stale, match="changed on the server"):
        fetcher.fetch_into(source(server), 0, out, total=len(DATA) - 10)  # it grew since the listing
    server.ignore_range = True  # a whole-object 200 tells its size by Content-Length
    with pytest.raises(Stale, match="changed on the server"):
        fetcher.fetch_into(source(server), 0, out, total=len(DATA) + 10)


def test_probe_size_asks_the_object(server: ByteServer, make_fetcher: Callable[..., HttpFetcher]) -> None:
    server.add("empty", b"")
    fetcher = make_fetcher()
    assert fetcher.probe_size(source(server)) == len(DATA)
    assert fetcher.probe_size(source(server, "empty")) == 0
    server.ignore_range = True
    assert fetcher.probe_size(source(server)) == len(DATA)


# ---------------------------------------------------------------------------------------------- without a thread


def _async(fetcher: HttpFetcher, url: str, start: int, length: int) -> tuple[bool, bytes, BaseException | None]:
    import threading

    buf = bytearray(length)
    outcome: list[BaseException | None] = []
    done = threading.Event()

    def on_done(error: BaseException | None) -> None:
        outcome.append(error)
        done.set()

    started = fetcher.fetch_async(url, start, memoryview(buf), on_done)
    if started:
        assert done.wait(10)
        assert len(outcome) == 1  # called exactly once
    return started, bytes(buf), outcome[0] if outcome else None


def test_fetch_async_is_one_attempt_on_libcurl_and_not_offered_by_httpx(
    server: ByteServer, make_fetcher: Callable[..., HttpFetcher], http_client: str
) -> None:
    from encordfs.core.link import LinkEstimate

    link = LinkEstimate()
    fetcher = make_fetcher(link=link)
    started, data, error = _async(fetcher, server.sign("a"), 1000, 5000)
    if http_client == "httpx":
        assert not started  # the caller then uses fetch_into on a thread
        return
    assert started and error is None and data == DATA[1000:6000]
    assert link.snapshot()["samples"] == 1
    server.inject(503)  # no retry here: the error is handed over, the caller falls back
    started, _, error = _async(fetcher, server.sign("a"), 0, 100)
    assert started and isinstance(error, RemoteIOError) and "503" in str(error)
    _, _, error = _async(fetcher, server.sign("a"), len(DATA) + 10, 100)
    assert isinstance(error, Stale)  # 416: past the end
    _, _, error = _async(fetcher, server.sign("nope"), 0, 100)
    assert isinstance(error, Stale)  # 404
    assert not any(secret in str(error) for secret in SECRETS)
    background = fetcher.background()
    started, data, error = _async(background, server.sign("a"), 0, 4096)  # type: ignore[arg-type]
    assert started and error is None and data == DATA[:4096]
    assert fetcher.counters.get("fetch.background_requests") == 1


def test_background_reads_leave_connections_for_demand(server: ByteServer, http_client: str) -> None:
    """Background GETs take at most max_connections - DEMAND_RESERVE slots: a demand read is never queued
    behind them."""
    import threading

    fetcher = HttpFetcher(http_client, max_connections=fetch.DEMAND_RESERVE + 2, retry_budget_s=5)
    try:
        background = fetcher.background()
        assert fetcher._background_slots.acquire(blocking=False)
        assert fetcher._background_slots.acquire(blocking=False)
        assert not fetcher._background_slots.acquire(blocking=False)  # two slots, both taken
        blocked = threading.Event()

        def read_in_background() -> None:
            background.fetch_into(source(server), 0, memoryview(bytearray(10)))
            blocked.set()

        t = threading.Thread(target=read_in_background, daemon=True)
        t.start()
        assert fetcher.fetch(source(server), 0, 100) == DATA[:100]  # demand: served at once
        assert not blocked.wait(0.3)  # the background read waits for a slot
        fetcher._background_slots.release()
        assert blocked.wait(10)
        fetcher._background_slots.release()
        t.join(5)
    finally:
        fetcher.close()


@contextlib.contextmanager
def _pausing_server(length: int, first: bytes, pause_s: float, then: bytes) -> Iterator[tuple[str, list[float]]]:
    """A one-connection HTTP server that answers a 206 of ``length`` bytes: its head with ``first``, then
    after ``pause_s`` ``then`` (noting when it was sent), then nothing until the test ends (a stall when
    ``first + then`` is shorter than ``length``). Yields its URL and the time ``then`` was sent."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    sent: list[float] = []
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            head = f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-{length - 1}/{len(DATA)}\r\n"
            conn.sendall(f"{head}Content-Length: {length}\r\n\r\n".encode() + first)
            time.sleep(pause_s)
            conn.sendall(then)
            sent.append(time.monotonic())
            done.wait(10)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/x", sent
    finally:
        done.set()
        listener.close()
        server.join(5)


def test_the_link_hears_the_first_byte_not_the_last(make_fetcher: Callable[..., HttpFetcher]) -> None:
    """The time to the first byte that the link measures is when the head came, even where the response
    is judged once the transfer has ended (libcurl): here the body's second half comes 0.4 s later."""
    from encordfs.core.link import LinkEstimate

    body = DATA[:20_000]
    seen: list[tuple[float, float]] = []

    class Link(LinkEstimate):
        def observe(self, nbytes: int, first_byte_s: float, total_s: float) -> None:
            seen.append((first_byte_s, total_s))

    with _pausing_server(20_000, body[:10_000], 0.4, body[10_000:]) as (url, _):
        fetcher = make_fetcher(link=Link())
        assert fetcher.fetch(lambda force: url, 0, 20_000) == body
    [(first_byte_s, total_s)] = seen
    assert total_s >= 0.4 and first_byte_s < 0.2


def test_a_pycurl_that_hides_libcurls_handle_is_not_usable() -> None:
    """The default transport reaches libcurl through the ``CURL *`` inside pycurl's object; where it
    cannot find it (here: a closed handle), that is ImportError, which the fetcher answers by falling
    back to httpx (as for a missing pycurl)."""
    pycurl = pytest.importorskip("pycurl")
    from encordfs.core import curl_transport

    curl = pycurl.Curl()
    assert curl_transport._NATIVE.easy_pointer(curl)  # found in a live one
    curl.close()
    with pytest.raises(ImportError):
        curl_transport._NATIVE.easy_pointer(curl)


def test_libcurl_catches_a_stall_within_its_timeout_after_the_last_byte() -> None:
    """A body that stops after some bytes is abandoned one stall timeout after its last byte (the loop
    looks every 1 % of it), not a timeout after the loop first saw it move."""
    pytest.importorskip("pycurl")
    from encordfs.core.curl_transport import CurlTransport
    from encordfs.core.fetch import Failure, TransportError

    transport = CurlTransport()
    try:
        with _pausing_server(100_000, DATA[:10_000], 0.6, DATA[10_000:20_000]) as (url, last_sent):
            with pytest.raises(TransportError) as caught:
                transport.get(url, 0, memoryview(bytearray(100_000)), lambda *a: None, 30.0, 1.0)
            abandoned = time.monotonic()
    finally:
        transport.close()
    assert caught.value.failure is Failure.STALL and caught.value.received == 20_000
    assert 1.0 <= abandoned - last_sent[0] < 1.35
