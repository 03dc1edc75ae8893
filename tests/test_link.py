"""The link estimate (latency, bandwidth, their product) and what the reader sizes from it."""

from __future__ import annotations

from encordfs.core.blockcache import MemoryBlockCache
from encordfs.core.link import LinkEstimate
from encordfs.core.reader import ReadPipeline

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_latency_is_the_median_first_byte_and_bandwidth_the_link_rate() -> None:
    clock = Clock()
    link = LinkEstimate(clock=clock, window_s=0.5)
    assert link.bdp_bytes() == 0 and link.latency_s == 0.0
    for i in range(40):  # 8 MiB every 0.125 s: 64 MiB/s, first bytes after 25 ms (one slow outlier)
        clock.now += 0.125
        link.observe(8 * MiB, 0.025 if i != 7 else 2.0, 0.1)
    assert link.latency_s == 0.025
    assert link.bandwidth_bytes_s == 64 * MiB
    assert link.bdp_bytes() == int(64 * MiB * 0.025)
    snap = link.snapshot()
    assert snap["samples"] == 40 and snap["latency_ms"] == 25.0 and snap["bdp_bytes"] == link.bdp_bytes()
    clock.now += 10  # no traffic for 10 s: the peak has halved
    assert link.bandwidth_bytes_s == 32 * MiB


def test_the_floor_is_the_least_recent_first_byte_not_the_queueing_on_top() -> None:
    clock = Clock()
    link = LinkEstimate(clock=clock, samples=8)
    assert link.floor_s == 0.0
    for first in (0.040, 0.025, 0.030):  # the link's own delay: 25 ms
        clock.now += 0.1
        link.observe(100_000, first, first + 0.001)
    assert link.floor_s == 0.025
    for _ in range(20):  # the copy's own transfers queue: every first byte is late, the median with them
        clock.now += 0.1
        link.observe(100_000, 0.120, 0.121)
    assert link.latency_s == 0.120 and link.floor_s == 0.025
    for _ in range(600):  # a minute of queued first bytes (the samples hold none of the early ones)
        clock.now += 0.1
        link.observe(100_000, 0.120, 0.121)
    assert link.latency_s == 0.120 and link.floor_s == 0.025  # never re-based on the queueing


class _Fixed:
    def __init__(self, bdp: int) -> None:
        self.bdp = bdp

    def bdp_bytes(self) -> int:
        return self.bdp


def test_readahead_grows_with_the_bandwidth_delay_product() -> None:
    def limits(bdp: int) -> tuple[int, int]:
        pipeline = ReadPipeline(
            fetcher=None,  # type: ignore[arg-type]
            cache=MemoryBlockCache(64 * MiB),
            memory_budget_bytes=512 * MiB,
            link=_Fixed(bdp),  # type: ignore[arg-type]
        )
        try:
            return pipeline._readahead_limits()
        finally:
            pipeline.close()

    assert limits(0) == (4, 64 * MiB)  # nothing measured: the defaults
    assert limits(64 * 1024) == (4, 64 * MiB)  # loopback: the defaults
    assert limits(3 * MiB) == (4, 64 * MiB)  # 8 x 3 MiB in flight: 3 parts (+1), the default 4
    assert limits(6 * MiB) == (7, 64 * MiB)  # 48 MiB: 6 parts (+1), in a window of 8
    assert limits(9 * MiB) == (10, 88 * MiB)  # 72 MiB: 9 parts (+1), a window holding 11
    assert limits(125 * MiB) == (11, 96 * MiB)  # 10 Gbit/s x 100 ms: a quarter of the readahead budget
