"""The read path's HTTP transports side by side: requests/s and client CPU per request, on loopback.

``python -m benchmarks.transport [--clients curl,httpx,old-stdlib] [--old REV] [--tls] [--http2] ...``

One nginx (``sendfile off; output_buffers 2 1m``, keep-alive, as in ``benchmarks/infra.py``) serves
N small files (default 2,000 × 100 KiB) and one big file (default 1 GiB) from a temp dir; the files
are read once first so the server answers from its page cache. Each contender is an
``HttpFetcher`` (the reader's seam, ``fetch_into``) and is measured in two phases:

- small: every small file once, ``--threads`` (8) threads calling ``fetch_into`` concurrently, one
  reused buffer per thread;
- big: the big file in ``--range-mib`` (8) MiB ranges, one after the other on one thread, into one
  reused buffer.

CPU is this process's user+system time over the phase (``time.process_time``: every thread of the
client, the transport's own included; nginx is another process). Contenders run interleaved, round
after round (``--rounds``, default 3), and the table shows medians, so a noisy VM slows them alike;
CPU columns also show the best round in parentheses (interference only ever adds CPU).

Contenders: ``curl`` (libcurl multi, HTTP/1.1: the default), ``curl-h2`` (libcurl, HTTP/2 when offered),
``httpx`` (the pure-Python fallback), and ``old-stdlib`` / ``old-httpx``: the fetcher of git revision
``--old`` (default ``6784a6c``, the last with the ``http.client`` pool), loaded from ``git show``, so
the transport it replaced stays measurable. ``--tls`` serves HTTPS with a throwaway CA (the
contenders trust it through ``ca_file``, old ones through ``SSL_CERT_FILE``); ``--http2`` lets nginx
offer h2 (ALPN) on that TLS port.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.infra import Cleanup, free_port, run_nginx  # noqa: E402
from encordfs.core.fetch import HttpFetcher  # noqa: E402
from harness.tls import make_pki  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OLD = "6784a6c"

_SERVER = """\
    http2_max_requests 1000000;
    {tls_conf}
    server {{
        listen 127.0.0.1:{port}{listen_extra};
        root {root};
    }}
"""


def start_nginx(stack: Cleanup, root: Path, work: Path, tls: tuple[Path, Path] | None, http2: bool) -> str:
    port = free_port()
    tls_conf, listen_extra = "", ""
    if tls is not None:
        tls_conf = (
            f"ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]}; "
            "ssl_session_cache shared:SSL:10m; ssl_session_timeout 1h;"
        )
        listen_extra = " ssl http2" if http2 else " ssl"

    def ready() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    run_nginx(stack, work, _SERVER.format(port=port, root=root, tls_conf=tls_conf, listen_extra=listen_extra), ready)
    return f"{'https' if tls else 'http'}://127.0.0.1:{port}"


def load_old(rev: str, directory: Path) -> ModuleType:
    """The fetcher module of ``rev``, imported from ``git show`` output (written to ``directory``)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:encordfs/core/fetch.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    path = directory / f"fetch_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"fetch_{rev}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_contender(name: str, old: Callable[[], ModuleType], ca_file: str | None) -> Any:
    if name == "curl":
        return HttpFetcher(http_client="curl", ca_file=ca_file)
    if name == "curl-h2":
        from encordfs.core.curl_transport import CurlTransport

        return HttpFetcher(transport=CurlTransport(ca_file=ca_file, http2=True))
    if name == "httpx":
        return HttpFetcher(http_client="httpx", ca_file=ca_file)
    if name == "old-stdlib":
        fetcher = old().HttpFetcher()
        assert fetcher._pool is not None, "a proxy is configured: the old fetcher would use httpx"
        return fetcher
    if name == "old-httpx":
        module = old()
        return module.HttpFetcher(client=module._default_client(16, 10.0))
    raise SystemExit(f"unknown contender {name!r}")


def phase_small(fetcher: Any, urls: list[str], size: int, threads: int) -> tuple[float, float]:
    """(wall s, cpu s) for fetching every URL once with ``threads`` threads."""
    it = iter(range(len(urls)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        buf = memoryview(bytearray(size))
        try:
            while True:
                with lock:
                    i = next(it, None)
                if i is None:
                    return
                url = urls[i]
                fetcher.fetch_into(lambda force, url=url: url, 0, buf)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    c0, t0 = time.process_time(), time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if errors:
        raise errors[0]
    return wall, cpu


def phase_big(fetcher: Any, url: str, size: int, range_bytes: int) -> tuple[float, float]:
    buf = memoryview(bytearray(range_bytes))
    c0, t0 = time.process_time(), time.perf_counter()
    for start in range(0, size, range_bytes):
        n = min(range_bytes, size - start)
        fetcher.fetch_into(lambda force: url, start, buf[:n])
    return time.perf_counter() - t0, time.process_time() - c0


def check_bytes(fetcher: Any, base: str, root: Path, names: list[str], big: str, big_bytes: int) -> None:
    """Outside the timed phases: a few files and ranges compared with the source, byte for byte."""
    rng = random.Random(1)
    for name in rng.sample(names, min(10, len(names))):
        data = (root / name).read_bytes()
        buf = bytearray(len(data))
        fetcher.fetch_into(lambda force, n=name: f"{base}/{n}", 0, memoryview(buf))
        assert buf == data, name
    with open(root / big, "rb") as f:
        for start in (0, big_bytes // 3, big_bytes - 5 * MiB):
            f.seek(start)
            data = f.read(5 * MiB)
            buf = bytearray(len(data))
            fetcher.fetch_into(lambda force: f"{base}/{big}?sig=x", start, memoryview(buf))
            assert buf == data, start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="curl,httpx,old-stdlib")
    p.add_argument("--old", default=DEFAULT_OLD, help="git revision whose fetch.py is old-* (default %(default)s)")
    p.add_argument("--small", type=int, default=2000, help="small files (default %(default)s)")
    p.add_argument("--small-kib", type=int, default=100)
    p.add_argument("--big-mib", type=int, default=1024)
    p.add_argument("--range-mib", type=int, default=8)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tls", action="store_true", help="serve HTTPS (a throwaway CA)")
    p.add_argument("--http2", action="store_true", help="let nginx offer HTTP/2 (with --tls)")
    args = p.parse_args()
    names = args.clients.split(",")
    small_bytes, big_bytes = args.small_kib * KiB, args.big_mib * MiB
    cached: dict[str, ModuleType] = {}

    with Cleanup() as stack:
        work = stack.temp_dir("bench-transport-")

        def old() -> ModuleType:
            if "m" not in cached:
                cached["m"] = load_old(args.old, work)
            return cached["m"]

        root = work / "root"
        root.mkdir()
        rng = random.Random(0)
        small = [f"s{i:05d}.bin" for i in range(args.small)]
        for name in small:
            (root / name).write_bytes(rng.randbytes(small_bytes))
        with open(root / "big.bin", "wb") as f:
            block = rng.randbytes(MiB)
            for i in range(args.big_mib):
                f.write(block[i % 7 :] + block[: i % 7])  # every MiB different, cheaply
        subprocess.run(["cat", *[str(root / n) for n in [*small, "big.bin"]]], stdout=subprocess.DEVNULL, check=True)
        ca_file = None
        tls = None
        if args.tls:
            pki = make_pki(work / "pki")
            ca_file, tls = str(pki.ca_file), (pki.cert_file, pki.key_file)
            os.environ["SSL_CERT_FILE"] = ca_file  # what the old fetchers trust
        base = start_nginx(stack, root, work / "nginx", tls, args.http2)
        # A query string like a signed URL's, so URL handling costs what it costs in a mount.
        query = "?Expires=9999999999&Signature=" + "0" * 64
        urls = [f"{base}/{n}{query}" for n in small]
        big_url = f"{base}/big.bin{query}"
        results: dict[str, dict[str, list[float]]] = {n: {"sw": [], "sc": [], "bw": [], "bc": []} for n in names}
        for name in names:
            fetcher = make_contender(name, old, ca_file)
            try:
                check_bytes(fetcher, base, root, small, "big.bin", big_bytes)
            finally:
                fetcher.close()
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else reversed(names):
                fetcher = make_contender(name, old, ca_file)
                try:
                    phase_small(fetcher, urls[: 4 * args.threads], small_bytes, args.threads)  # connect, warm up
                    sw, sc = phase_small(fetcher, urls, small_bytes, args.threads)
                    bw, bc = phase_big(fetcher, big_url, big_bytes, args.range_mib * MiB)
                finally:
                    fetcher.close()
                for key, value in (("sw", sw), ("sc", sc), ("bw", bw), ("bc", bc)):
                    results[name][key].append(value)
                print(
                    f"  round {r + 1} {name:<11} small {len(urls) / sw:7.0f} req/s {sc / len(urls) * 1e6:6.0f} us cpu/req"
                    f"   big {big_bytes / bw / 1e9:5.2f} GB/s {bc / (big_bytes / MiB) * 1e3:6.2f} ms cpu/MiB",
                    file=sys.stderr,
                    flush=True,
                )
        ranges = big_bytes // (args.range_mib * MiB)
        print(
            f"\n{args.small} x {args.small_kib} KiB GETs ({args.threads} threads) and {args.big_mib} MiB in "
            f"{args.range_mib} MiB ranges (1 thread), {'HTTPS' + (' h2 offered' if args.http2 else '') if args.tls else 'HTTP'}"
            f" on loopback; medians of {args.rounds} rounds\n"
        )
        print("| client | small req/s | small CPU/req (best) | big GB/s | big CPU/range | big CPU/GiB (best) |")
        print("|---|---|---|---|---|---|")
        for name in names:
            m = {k: statistics.median(v) for k, v in results[name].items()}
            best_sc, best_bc = min(results[name]["sc"]), min(results[name]["bc"])
            print(
                f"| {name} | {len(urls) / m['sw']:,.0f} | {m['sc'] / len(urls) * 1e6:,.0f} µs "
                f"({best_sc / len(urls) * 1e6:,.0f}) | {big_bytes / m['bw'] / 1e9:.2f} | "
                f"{m['bc'] / ranges * 1e3:.2f} ms | {m['bc'] / (big_bytes / (1 << 30)):.2f} s "
                f"({best_bc / (big_bytes / (1 << 30)):.2f}) |"
            )


if __name__ == "__main__":
    main()
