"""The mount's one connection to the shared Redis: the only module that imports ``redis``.

Owns the client (timeouts, TLS, password), the startup check, and the *degrade* rule every shared
piece relies on: a Redis command either answers within ``timeout_s`` or raises ``SharedDown``, and
its caller carries on against Encord (or the origin) as if there were no cluster.

Degrade and rejoin
    The first connection or timeout error marks the link *down*: one warning in the log (not one per
    failed command), ``shared.degraded_events`` + 1. While down, ``run`` raises ``SharedDown`` at once
    without touching the network, so a dead Redis costs a read nothing after its first failure. A
    prober thread PINGs every ``PROBE_INTERVAL_S``; the first answer marks the link up again (a log
    line, ``shared.rejoins``). Every failed command counts in ``shared.redis_errors``. A command
    Redis refuses (``ResponseError``: out of memory, a read-only replica) raises ``SharedDown`` for
    that command only. A Redis that restarted empty is not an error: everything in it is a cache, and
    every reader treats a missing key as a miss.

Leases
    ``Lease``: ``SET key token NX PX ttl``; renewed (``PEXPIRE``) and released (``DEL``) only by its
    holder, by a compare-and-set script, so a lease that expired and was taken by another node is
    never extended or dropped by the first. A holder that dies loses its lease when the TTL runs out.

Errors at startup (``connect``) are one line each, ``errors.FsError`` subclasses; nothing here ever
puts the password, or a URL with one, into a message (``where`` is the redacted URL).

Lock order: ``_lock`` is a leaf.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from encordfs import errors
from encordfs.core.counters import Counters
from encordfs.settings import redact_redis_url

log = logging.getLogger(__name__)
T = TypeVar("T")

# While Redis is down, how often the prober asks it again. Short: a node rejoins within seconds of
# Redis coming back, and a PING of a dead server costs nothing (connection refused).
PROBE_INTERVAL_S = 2.0

_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# Connection-level trouble: the link goes down until a PING answers again.
_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError, redis.BusyLoadingError, OSError)


class SharedDown(Exception):
    """Redis cannot serve this command now; the caller carries on without the cluster."""


class RedisLink:
    """A redis-py client with bounded commands, degrade-and-rejoin, and counters (module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None,
        timeout_s: float,
        counters: Counters,
        ca_file: str | None = None,
    ) -> None:
        self.where = redact_redis_url(url)
        self.counters = counters
        self._timeout_s = timeout_s
        kwargs: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            # One quick retry replaces a pooled connection that a Redis restart closed; more would only
            # make a dead Redis cost longer before the link goes down.
            "retry": Retry(NoBackoff(), 1),
            "client_name": "encordfs",
        }
        if password is not None and not urlsplit(url).password:
            kwargs["password"] = password
        self._has_password = bool(urlsplit(url).password) or password is not None
        if ca_file and url.startswith("rediss://"):
            kwargs["ssl_ca_certs"] = ca_file
        self._client = redis.Redis.from_url(url, **kwargs)
        self._lock = threading.Lock()
        self._up = True
        self._closed = threading.Event()
        self._prober: threading.Thread | None = None

    # -- startup

    def connect(self) -> None:
        """PING once; a Redis that cannot be used is one line (``errors.FsError``), never a traceback."""
        wants = (
            f"Redis at {self.where} wants a password: put it in the --shared URL (redis://:PASSWORD@HOST:PORT/DB) "
            "or in ENCORDFS_REDIS_PASSWORD"
        )
        refused = f"Redis at {self.where} refused the password (from the --shared URL or ENCORDFS_REDIS_PASSWORD)"
        try:
            self._client.ping()
        except redis.AuthenticationError:
            raise errors.AuthError(refused if self._has_password else wants) from None
        except redis.ResponseError as exc:
            if "AUTH" in str(exc).upper():
                raise errors.AuthError(refused if self._has_password else wants) from None
            raise errors.Unavailable(f"Redis at {self.where} refused PING ({_first_word(exc)})") from None
        except redis.TimeoutError:
            raise errors.Unavailable(f"Redis at {self.where} did not answer within {self._timeout_s:g} s") from None
        except (redis.ConnectionError, OSError) as exc:
            raise errors.Unavailable(f"cannot reach Redis at {self.where} ({_reason(exc)})") from None
        except redis.RedisError as exc:
            raise errors.Unavailable(f"Redis at {self.where}: {type(exc).__name__}") from None

    def warn_if_unbounded(self) -> None:
        """Shared blocks fill Redis until it evicts: say so if it is not set up to (best effort: managed
        services often refuse CONFIG)."""
        try:
            config = self._client.config_get("maxmemory*")
        except redis.RedisError:
            return
        memory = int(config.get("maxmemory", 0) or 0)
        policy = str(config.get("maxmemory-policy", ""))
        if memory == 0 or not policy.startswith("allkeys-"):
            log.warning(
                "shared blocks: Redis at %s has maxmemory %s and maxmemory-policy %s; set maxmemory and "
                "maxmemory-policy allkeys-lru so that it evicts old blocks instead of refusing writes",
                self.where,
                memory or "unlimited",
                policy or "unknown",
            )

    # -- commands

    @property
    def up(self) -> bool:
        return self._up

    def run(self, command: Callable[[Any], T]) -> T:
        """``command(client)``, or ``SharedDown`` (module docstring: degrade and rejoin)."""
        if not self._up:
            raise SharedDown(self.where)
        try:
            return command(self._client)
        except _DOWN as exc:
            self.counters.inc("shared.redis_errors")
            self._went_down(exc)
            raise SharedDown(self.where) from None
        except redis.RedisError as exc:
            self.counters.inc("shared.redis_errors")
            log.debug("shared: Redis refused a command: %s", _first_word(exc))
            raise SharedDown(self.where) from None

    def pipeline(self, fill: Callable[[Any], object], transaction: bool = False) -> list[Any]:
        """One round trip: ``fill(pipe)`` queues commands; their replies in order."""

        def go(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=transaction)
            fill(pipe)
            return list(pipe.execute())

        return self.run(go)

    def server_time(self) -> float:
        """Redis's clock, unix seconds: the one clock every node compares (load and landing times)."""
        seconds, micros = self.run(lambda r: r.time())
        return float(seconds) + float(micros) / 1e6

    def pubsub(self) -> Any:
        return self._client.pubsub(ignore_subscribe_messages=True)

    def mark_down(self, exc: BaseException) -> None:
        """A subscriber's connection failed: the same as a failed command."""
        self.counters.inc("shared.redis_errors")
        self._went_down(exc)

    def wait_up(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self._up and not self._closed.is_set() and time.monotonic() < deadline:
            self._closed.wait(0.2)
        return self._up

    def close(self) -> None:
        self._closed.set()
        prober = self._prober
        if prober is not None:
            prober.join(PROBE_INTERVAL_S + self._timeout_s + 1)
        try:
            self._client.close()
        except redis.RedisError:
            pass

    # -- degrade and rejoin

    def _went_down(self, exc: BaseException) -> None:
        with self._lock:
            if not self._up or self._closed.is_set():
                return
            self._up = False
            self.counters.inc("shared.degraded_events")
            self._prober = threading.Thread(target=self._probe, name="encordfs-redis-probe", daemon=True)
            self._prober.start()
        log.warning(
            "shared: Redis at %s is not answering (%s); carrying on against Encord directly until it is back",
            self.where,
            _reason(exc),
        )

    def _probe(self) -> None:
        while not self._closed.wait(PROBE_INTERVAL_S):
            try:
                self._client.ping()
            except redis.RedisError:
                continue
            with self._lock:
                self._up = True
                self.counters.inc("shared.rejoins")
            log.warning("shared: Redis at %s answers again; rejoining the cluster", self.where)
            return


class Lease:
    """A cluster-wide lease on ``key`` (module docstring); ``token`` tells its holder apart."""

    def __init__(self, link: RedisLink, key: str, ttl_ms: int) -> None:
        self.link = link
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = secrets.token_hex(8)

    def acquire(self) -> bool:
        return bool(self.link.run(lambda r: r.set(self.key, self.token, nx=True, px=self.ttl_ms)))

    def held_by_someone(self) -> bool:
        return bool(self.link.run(lambda r: r.exists(self.key)))

    def renew(self) -> bool:
        return bool(self.link.run(lambda r: r.eval(_RENEW, 1, self.key, self.token, self.ttl_ms)))

    def release(self) -> None:
        try:
            self.link.run(lambda r: r.eval(_RELEASE, 1, self.key, self.token))
        except SharedDown:
            pass  # it expires by itself


def _first_word(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.split()[0] if text else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """A short reason for a log line or message; redis-py's connection messages name host and port only."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text[:160] or type(exc).__name__
