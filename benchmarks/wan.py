"""The benchmark's realistic network regime (``benchmarks/run --regime wan``): TLS, latency, a bandwidth cap.

Every other figure is measured on loopback, where a round trip costs microseconds. Encord's API and
the buckets behind its signed URLs are tens of ms away and speak TLS; there a reader of files one
after another waits a round trip per file. This regime reproduces that, offline, on one machine:

Network (set up and torn down by the run itself, always: ``WanNetwork``)
    A network namespace of its own (``ip netns add``) with its loopback up and a ``tbf`` qdisc on it:
    every byte between the servers and the clients crosses it, capped at ``rate_bit_s`` (1 Gbit/s;
    this kernel has no ``netem``, ``tbf`` works). The driver process stays outside, runs the whole
    measurement inside it (``ip netns exec NS python -m benchmarks.bench --regime wan --in-netns``:
    servers, mounts, rclone, every client), waits for it even on Ctrl-C (the child gets the same
    SIGINT and cleans up itself), then stops whatever is still in the namespace (by pid: ``ip netns
    pids``; only this run's processes live there) and deletes it. ``ip netns exec`` also gives the
    child its own mount namespace, so even a mount left behind dies with it.

Servers (inside, ``WanWorld``)
    A private CA made at setup (``harness.tls.make_pki``). One nginx with TLS on two ports: the blob
    server (root ``www/``: the emulator's blob dir as ``blobs/``, and ``seq/`` holding links to the
    sequential dataset's blobs under their titles, so rclone can ``tar`` the same folder) answers every
    request ``blob_latency_s`` late (``echo_sleep`` from ``libnginx-mod-http-echo``, Range requests
    included), and a TLS reverse proxy in front of the emulator (its API answers ``--latency-ms``
    late: 50 ms). Every client trusts the CA through a file: the mount's ``--ca-file``, the SDK's
    ``REQUESTS_CA_BUNDLE``, httpx's ``verify``, rclone's ``--ca-cert``.

Figures (``WanBench``)
    wan_seq_*        a single-threaded ``tar cf - seq | wc -c`` of 1,000 × 100 KiB (listing done first, as
                     in every read phase) through the mount, against the same through ``rclone mount`` of
                     the blob server (``wan_seq_rclone``) and against the naive SDK loop
                     (``refetch_data(signed_url=True)`` + GET per row, on a subset: ``wan_seq_sdk``). GNU
                     tar does not read a file's bytes when its output *is* /dev/null, hence ``| wc -c``.
                     ``wan_seq_direct_files_s``: the same files by 8 threads of direct GETs of pre-signed
                     URLs (a reference: parallel, not one file after another).
    wan_epoch_*      a shuffled epoch over 2,000 × 100 KiB by 8 loader workers (torch's DataLoader when
                     torch is installed, else 8 processes taking batches in turn), read only: each sample
                     is the file's bytes read whole, no decode. With order hints (``encordfs.ml.
                     HintedSampler``), without (the same order, not announced), and from local disk (the
                     source files, page cache dropped): ``wan_epoch_hinted`` and ``wan_epoch_unhinted``
                     are mount ÷ local. ``wan_epoch_link_bound``: the highest such ratio the bandwidth cap
                     allows (``wan_epoch_link_files_s``, the cap ÷ a file's bytes, ÷ local).
    wan_demand_*     what prefetch costs a read it did not foresee (``WanBench.demand_probes``): during a
                     third hinted epoch, a cold file of the ``seq`` folder read whole through the same
                     mount every 50 ms (every 5th file: no lookahead run), then as many on the idle link;
                     medians ``wan_demand_busy_ms`` and ``wan_demand_idle_ms``, ``wan_demand_busy_ratio``
                     busy ÷ idle. ``wan_demand_direct_*``: a direct GET of a pre-signed URL after each
                     probe, on a warm connection: what the link alone adds when busy.
    wan_big_*        1 GiB read cold through the mount (1 MiB reads, one thread) ÷ the bandwidth cap
                     (``wan_big_link``); one direct streaming GET of the same URL for reference.
    wan_ttfb_*       open + first 4 KiB of cold files (never read in that mount; picked at random, so no
                     lookahead) after one earlier open in the folder (whose signing call covered its
                     neighbours), median; ÷ a direct 4 KiB range GET of a pre-signed URL on a warm TLS
                     connection, median (``wan_ttfb_ratio``). ``wan_ttfb_first_ms``: the first file of a
                     fresh mount, which also pays for signing (one API round trip).
    wan_cp_*         ``encordfs cp`` of the epoch dataset with its defaults (files/s as cp reports its copy
                     phase), and ÷ the bandwidth cap (``wan_cp_link``: the payload's share of the link).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks import infra
from benchmarks.infra import Cleanup, EncordMount, RcloneMount, mounted

MiB = 1 << 20
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")


@dataclass(frozen=True)
class WanSizes:
    seq_count: int
    epoch_count: int
    file_bytes: int
    big_bytes: int
    sdk_subset: int
    ttfb_files: int


PROBE_GAP_S = 0.05  # between two demand probes (``WanBench.demand_probes``)
WAN_FULL = WanSizes(1000, 2000, 100 * 1024, 1 << 30, 100, 20)
WAN_QUICK = WanSizes(300, 600, 100 * 1024, 256 * MiB, 40, 12)


@dataclass(frozen=True)
class Regime:
    rate_bit_s: int = 1_000_000_000
    blob_latency_s: float = 0.025
    api_latency_ms: int = 50


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] wan: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- outside


class WanNetwork:
    """The namespace and its shaped loopback; ``run_inside`` runs the measurement in it."""

    def __init__(self, regime: Regime) -> None:
        self.regime = regime
        self.name = f"encordfs-wan-{os.getpid()}"
        self._created = False

    def __enter__(self) -> WanNetwork:
        missing = [tool for tool in ("ip", "tc", "nginx") if shutil.which(tool) is None]
        if missing or not ECHO_MODULE.exists():
            what = missing + ([] if ECHO_MODULE.exists() else ["libnginx-mod-http-echo"])
            raise RuntimeError(f"the wan regime needs {', '.join(what)} (benchmarks/run installs them)")
        _run(["ip", "netns", "add", self.name])
        self._created = True
        try:
            _run(["ip", "-n", self.name, "link", "set", "lo", "up"])
            # burst: at least one 64 KiB loopback packet plus room (a smaller one drops them); latency: the
            # queue a burst of TCP may fill before tbf drops (loopback TCP recovers slowly from drops).
            rate = self.regime.rate_bit_s
            _run(["ip", "netns", "exec", self.name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
                  "rate", f"{rate}bit", "burst", "1mb", "latency", "50ms"])  # fmt: skip
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def run_inside(self, argv: list[str]) -> int:
        """Run ``argv`` in the namespace; on Ctrl-C or SIGTERM wait for it to clean up (it got the same
        signal, or is sent SIGTERM), killing it only after a grace period."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv])
        try:
            return proc.wait()
        except BaseException:
            for sig, grace_s in ((None, 60.0), (signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
                if sig is not None and proc.poll() is None:
                    proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired, KeyboardInterrupt):
                    proc.wait(grace_s)
                if proc.poll() is not None:
                    break
            raise

    def qdisc_stats(self) -> str:
        done = subprocess.run(["ip", "netns", "exec", self.name, "tc", "-s", "qdisc", "show", "dev", "lo"],
                              capture_output=True, text=True)  # fmt: skip
        return " ".join(done.stdout.split())

    def __exit__(self, *exc: object) -> None:
        if not self._created:
            return
        # Only this run's processes live in the namespace: stop whatever the child left, by pid.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if not pids:
                break
            deadline = time.monotonic() + 10
            while self._pids() and time.monotonic() < deadline:
                time.sleep(0.1)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        self._created = False

    def _pids(self) -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(p) for p in done.stdout.split() if p.isdigit()]


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {done.stderr.strip()[-300:]}")


def run_regime(quick: bool, extra: list[str], regime: Regime = Regime()) -> dict[str, Any]:
    """The driver: make the network, run the measurement inside it, return its figures and notes."""
    out = Path(tempfile.mkdtemp(prefix="encordfs-wan-out-"))
    try:
        result = out / "wan.json"
        with WanNetwork(regime) as net:
            log(f"network namespace {net.name}: loopback capped at {regime.rate_bit_s / 1e9:g} Gbit/s (tbf)")
            argv = [sys.executable, "-m", "benchmarks.bench", "--regime", "wan", "--in-netns", str(result), *extra]
            code = net.run_inside(argv + (["--quick"] if quick else []))
            qdisc = net.qdisc_stats()
        if code != 0 or not result.exists():
            return {"fig": {}, "notes": [f"wan regime failed (exit status {code}); see the messages above"],
                    "counters": {}}  # fmt: skip
        found: dict[str, Any] = json.loads(result.read_text())
        found.setdefault("notes", []).append(f"wan tbf: {qdisc}")
        return found
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- inside


_HTTP = """\
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_session_cache shared:tls:10m;
    ssl_session_timeout 1h;
    upstream emulator {{
        server 127.0.0.1:{emu_port};
        keepalive 64;
    }}
    server {{  # the bucket: every request answered {blob_latency} s late, Range included
        listen 127.0.0.1:{blob_port} ssl;
        location / {{
            echo_sleep {blob_latency};
            echo_exec @file;
        }}
        location @file {{
            root {www};
            autoindex on;
            autoindex_exact_size on;
        }}
    }}
    server {{  # Encord's API, over TLS (the emulator adds its own latency)
        listen 127.0.0.1:{api_port} ssl;
        client_max_body_size 0;
        location / {{
            proxy_pass http://emulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
"""


def start_tls_nginx(stack: Cleanup, work: Path, www: Path, pki: Any, ports: dict[str, int], latency_s: float) -> None:
    http = _HTTP.format(cert=pki.cert_file, key=pki.key_file, www=www, blob_latency=f"{latency_s:g}", **ports)
    context = ssl.create_default_context(cafile=str(pki.ca_file))

    def ready() -> bool:
        try:
            return httpx.get(f"https://127.0.0.1:{ports['blob_port']}/", verify=context, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    infra.run_nginx(
        stack, work, http, ready, head=f"load_module {ECHO_MODULE};\n", connections=4096, what="nginx (TLS)"
    )


class _ReadWhole:
    """A map-style dataset whose sample is the number of bytes of a file read whole (no decode)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> int:
        n = 0
        with open(self.paths[i], "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                n += len(chunk)
        return n


def _read_batch(args: tuple[list[str], list[int]]) -> int:
    paths, batch = args
    data = _ReadWhole(paths)
    return sum(data[i] for i in batch)


def epoch(paths: Sequence[str], sampler: Any, workers: int = 8, batch_size: int = 32) -> tuple[float, int, str]:
    """(seconds, bytes, loader) of one epoch over ``paths`` in ``sampler``'s order by ``workers``."""
    try:
        import torch.utils.data
    except ImportError:
        torch = None
    t0 = time.perf_counter()
    if torch is not None:
        loader = torch.utils.data.DataLoader(
            _ReadWhole(paths), sampler=sampler, batch_size=batch_size, num_workers=workers,
            collate_fn=sum, prefetch_factor=2,
        )  # fmt: skip
        total = sum(loader)
        return time.perf_counter() - t0, total, "torch"
    import multiprocessing

    order = list(iter(sampler))
    batches = [(list(paths), order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        total = sum(pool.imap(_read_batch, batches, chunksize=1))
    return time.perf_counter() - t0, total, "pool"


class _Order:
    """A fixed order as a sampler (the unhinted epoch reads the hinted one's order, unannounced)."""

    def __init__(self, order: list[int]) -> None:
        self.order = order

    def __iter__(self) -> Any:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class WanBench:
    """The measurement, run inside the namespace (see the module docstring)."""

    def __init__(
        self, stack: Cleanup, sizes: WanSizes, regime: Regime, mount_args: list[str], profile: bool = False
    ) -> None:
        self.stack = stack
        self.profile = profile
        self.sizes = sizes
        self.regime = regime
        self.mount_args = mount_args
        self.work = stack.temp_dir("encordfs-wan-")
        self.fig: dict[str, Any] = {}
        self.notes: list[str] = []
        self.counters: dict[str, dict[str, Any]] = {}
        self.seq = 0

    # -- setup

    def make_source(self) -> dict[str, list[Path]]:
        s = self.sizes
        header = b"%PDF-1.4\n%bench\n"
        pool = os.urandom(32 * MiB)
        span = len(pool) - s.file_bytes
        out: dict[str, list[Path]] = {}
        for title, prefix, count in (("seq", "f", s.seq_count), ("epoch", "e", s.epoch_count)):
            folder = self.work / "src" / title
            folder.mkdir(parents=True)
            out[title] = []
            for i in range(count):
                path = folder / f"{prefix}{i:06d}.pdf"
                at = (i * 104_729 + len(title)) % span
                path.write_bytes(header + pool[at : at + s.file_bytes - len(header)])
                out[title].append(path)
        (self.work / "src" / "big").mkdir()
        big = self.work / "src" / "big" / "big.pdf"
        with open(big, "wb") as f:
            f.write(header)
            left = s.big_bytes - len(header)
            while left > 0:
                f.write(os.urandom(min(left, 8 * MiB)))
                left -= min(left, 8 * MiB)
        out["big"] = [big]
        return out

    def setup(self) -> None:
        from harness.tls import make_pki

        t0 = time.monotonic()
        s = self.sizes
        log(f"data: {s.seq_count} + {s.epoch_count} × {s.file_bytes // 1024} KiB, 1 × {s.big_bytes // MiB} MiB")
        self.src = self.make_source()
        self.pki = make_pki(self.work / "pki")
        for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
            os.environ[name] = str(self.pki.ca_file)
        self.verify = ssl.create_default_context(cafile=str(self.pki.ca_file))
        self.ports = {"blob_port": infra.free_port(), "api_port": infra.free_port()}
        www = self.work / "www"
        www.mkdir()
        data_dir = self.work / "emu"
        (www / "blobs").symlink_to(data_dir / "blobs", target_is_directory=True)
        blob_base = f"https://127.0.0.1:{self.ports['blob_port']}"
        log(
            f"emulator (API latency {self.regime.api_latency_ms} ms) and nginx (TLS, blobs {self.regime.blob_latency_s * 1000:g} ms late)"
        )
        emu = infra.start_emulator(
            self.stack, data_dir,
            ["--import", str(self.work / "src"), "--blob-base-url", f"{blob_base}/blobs",
             "--latency-ms", str(self.regime.api_latency_ms)],
            self.work / "emulator.log",
        )  # fmt: skip
        self.ports["emu_port"] = int(emu.domain.rsplit(":", 1)[1])
        start_tls_nginx(self.stack, self.work / "nginx", www, self.pki, self.ports, self.regime.blob_latency_s)
        self.emu_direct = emu
        self.emu = infra.Emulator(emu.proc, f"https://127.0.0.1:{self.ports['api_port']}", emu.key_file)
        self.blob_base = blob_base
        self.urls = self.presign()
        seq_links = www / "seq"
        seq_links.mkdir()
        for path, url in zip(self.src["seq"], self.urls["seq"], strict=True):
            blob = url.split("?", 1)[0].rsplit("/", 1)[1]
            (seq_links / path.name).symlink_to(Path("..") / "blobs" / blob)
        self.fig["wan_setup_s"] = time.monotonic() - t0
        self.fig["wan_rate_mbit_s"] = self.regime.rate_bit_s / 1e6
        self.fig["wan_blob_latency_ms"] = self.regime.blob_latency_s * 1000
        self.fig["wan_api_latency_ms"] = self.regime.api_latency_ms

    def presign(self) -> dict[str, list[str]]:
        """Signed URLs of every source file, by dataset, in source order (one bulk call per 1,000)."""
        client = self.emu.sdk()
        datasets = {d["dataset"].title: str(d["dataset"].dataset_hash) for d in client.get_datasets()}
        self.dataset_hash = datasets
        out: dict[str, list[str]] = {}
        for title in ("seq", "epoch", "big"):
            rows = sorted(client.get_dataset(datasets[title]).data_rows, key=lambda r: r.title)
            items = [str(r.backing_item_uuid) for r in rows]
            signed: dict[str, str] = {}
            for start in range(0, len(items), 1000):
                for item in client.get_storage_items(items[start : start + 1000], sign_url=True):
                    signed[str(item.uuid)] = item._orm_item.signed_url
            out[title] = [signed[i] for i in items]
        return out

    def mount(self) -> EncordMount:
        self.seq += 1
        return EncordMount(
            self.emu, self.work / f"mnt{self.seq}", self.work / f"cache{self.seq}", self.work / f"mount{self.seq}.log",
            "--ca-file", str(self.pki.ca_file), *self.mount_args,
        )  # fmt: skip

    def snapshot_counters(self, m: EncordMount, phase: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            status = json.loads((m.path / ".encordfs" / "status.json").read_text())
            self.counters[phase] = {
                **status.get("counters", {}),
                **{f"link.{k}": v for k, v in status.get("link", {}).items()},
            }

    @contextlib.contextmanager
    def measured(self, m: EncordMount, phase: str, units: int) -> Any:
        """The mount process's CPU per unit (file or MiB) over the block, as ``{phase}_mount_cpu_ms``
        (the machine has 2 cores: CPU per file is what bounds a mount here), and its context switches
        per unit (``{phase}_mount_switches``, ``infra.switches``); py-spy with ``--profile``."""
        with (
            infra.per_unit(m.pid, units, self.fig, f"{phase}_mount", cpu_unit="ms"),
            infra.profiled(m.pid if self.profile else None, infra.REPO / "benchmarks" / "out" / f"profile-{phase}.txt"),
        ):
            yield

    # -- phases

    def run(self, phases: set[str]) -> None:
        self.setup()
        for name in ("seq", "epoch", "big", "ttfb", "cp"):
            if name in phases:
                try:
                    getattr(self, f"phase_{name}")()
                except (AssertionError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    self.notes.append(f"wan phase {name} failed: {type(exc).__name__}: {str(exc)[:300]}")
                    log(f"phase {name} failed: {exc}")

    def tar(self, folder: Path) -> tuple[float, int]:
        t0 = time.perf_counter()
        done = subprocess.run(f"tar cf - {folder.name} | wc -c", shell=True, cwd=folder.parent, capture_output=True,
                              text=True, timeout=1800)  # fmt: skip
        secs = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"tar failed: {done.stderr.strip()[-300:]}")
        return secs, int(done.stdout.strip())

    def phase_seq(self) -> None:
        n = self.sizes.seq_count
        payload = n * self.sizes.file_bytes
        log(f"seq: tar of {n} files through the mount")
        with mounted(self.mount) as m:
            os.listdir(m.path / "seq")
            with self.measured(m, "wan_seq", n):
                secs, nbytes = self.tar(m.path / "seq")
            self.snapshot_counters(m, "wan_seq")
        assert nbytes >= payload, (nbytes, payload)
        self.fig["wan_seq_mount_files_s"] = n / secs
        log(f"seq: {n / secs:.0f} files/s; now rclone mount")
        conf_extra = ["--ca-cert", str(self.pki.ca_file)]
        with mounted(lambda: RcloneMount(self.blob_base, self.work / "rclone-mnt", self.work, *conf_extra)) as r:
            os.listdir(r.path / "seq")
            secs, nbytes = self.tar(r.path / "seq")
        assert nbytes >= payload, (nbytes, payload)
        self.fig["wan_seq_rclone_files_s"] = n / secs
        log("seq: direct parallel GETs of the pre-signed URLs (8 threads, one pooled client)")
        self.fig["wan_seq_direct_files_s"] = n / self.get_parallel(self.urls["seq"])
        k = min(self.sizes.sdk_subset, n)
        log(f"seq: naive SDK loop over {k} rows")
        self.fig["wan_seq_sdk_files_s"] = self.sdk_loop("seq", k)
        mount = self.fig["wan_seq_mount_files_s"]
        self.fig["wan_seq_rclone"] = mount / self.fig["wan_seq_rclone_files_s"]
        self.fig["wan_seq_sdk"] = mount / self.fig["wan_seq_sdk_files_s"]

    def get_parallel(self, urls: list[str]) -> float:
        """Seconds to GET every URL whole with 8 threads over one pooled httpx client."""
        secs, total = infra.get_parallel(urls, 8, self.verify)
        assert total == len(urls) * self.sizes.file_bytes, total
        return secs

    def sdk_loop(self, title: str, k: int) -> float:
        client = self.emu.sdk()
        rows = sorted(client.get_dataset(self.dataset_hash[title]).data_rows, key=lambda r: r.title)[:k]
        return infra.sdk_loop(rows, self.sizes.file_bytes, self.verify)

    def phase_epoch(self) -> None:
        from encordfs.ml import HintedSampler

        n = self.sizes.epoch_count
        order = list(range(n))
        random.Random(13).shuffle(order)
        names = [p.name for p in self.src["epoch"]]
        loader = ""
        for label in ("hinted", "unhinted"):
            log(f"epoch: shuffled, 8 workers, {n} files through the mount ({label})")
            with mounted(self.mount) as m:
                paths = [str(m.path / "epoch" / name) for name in names]
                os.listdir(m.path / "epoch")
                sampler = HintedSampler(paths, sampler=_Order(order)) if label == "hinted" else _Order(order)
                with self.measured(m, f"wan_epoch_{label}", n):
                    secs, nbytes, loader = epoch(paths, sampler)
                self.snapshot_counters(m, f"wan_epoch_{label}")
            assert nbytes == n * self.sizes.file_bytes, nbytes
            self.fig[f"wan_epoch_{label}_files_s"] = n / secs
        log("epoch: the same from local disk, page cache dropped")
        infra.drop_caches()
        secs, nbytes, loader = epoch([str(p) for p in self.src["epoch"]], _Order(order))
        assert nbytes == n * self.sizes.file_bytes, nbytes
        self.fig["wan_epoch_local_files_s"] = n / secs
        for label in ("hinted", "unhinted"):
            self.fig[f"wan_epoch_{label}"] = (
                self.fig[f"wan_epoch_{label}_files_s"] / self.fig["wan_epoch_local_files_s"]
            )
        # What the bandwidth cap alone allows: every byte of the epoch crosses the capped link (body only;
        # TLS records, HTTP headers and TCP/IP take more), so no mount's ratio can be above this one.
        self.fig["wan_epoch_link_files_s"] = self.regime.rate_bit_s / 8 / self.sizes.file_bytes
        self.fig["wan_epoch_link_bound"] = self.fig["wan_epoch_link_files_s"] / self.fig["wan_epoch_local_files_s"]
        self.notes.append(f"wan epoch loader: {loader} (8 workers, batches of 32)")
        self.demand_probes(order, names)  # last: its failure loses no epoch figure

    def demand_probes(self, order: list[int], names: list[str]) -> None:
        """What prefetch costs a read it did not foresee: whole reads of cold files of another folder
        (``seq``, every 5th file: no run for lookahead), one every ``PROBE_GAP_S``, while a hinted
        epoch keeps the link busy, then as many on the idle link (so at most half the probe files
        busy), through one mount whose URLs for them are signed beforehand. After each, a direct GET
        of the next file's pre-signed URL on a warm connection. ``wan_demand_busy_ms`` and
        ``wan_demand_idle_ms`` are the mount's medians (open to the last byte), ``wan_demand_busy_ratio``
        busy ÷ idle, ``wan_demand_direct_*`` the direct GETs'."""
        from encordfs.ml import HintedSampler

        n = len(names)
        seq = self.src["seq"]
        probes = [(seq[i].name, self.urls["seq"][i + 1]) for i in range(5, len(seq) - 1, 5)]
        log(f"epoch: hinted again, with a cold file of another folder read every {PROBE_GAP_S * 1000:g} ms")
        busy: list[tuple[float, float]] = []  # (through the mount, direct)
        idle: list[tuple[float, float]] = []
        with mounted(self.mount) as m, httpx.Client(timeout=60, verify=self.verify) as client:
            paths = [str(m.path / "epoch" / name) for name in names]
            os.listdir(m.path / "epoch")
            folder = m.path / "seq"
            os.listdir(folder)
            infra_read_whole(folder / seq[0].name)  # signs the folder's URLs (one call)
            _direct(client, self.urls["seq"][1])  # a warm connection
            done = threading.Event()

            def probe(name: str, url: str) -> tuple[float, float]:
                secs, got = infra_read_whole(folder / name)
                assert got == self.sizes.file_bytes, got
                return secs, _direct(client, url)

            def probe_while_busy() -> None:
                for name, url in probes[: len(probes) // 2]:
                    if done.wait(PROBE_GAP_S):
                        return
                    busy.append(probe(name, url))

            prober = threading.Thread(target=probe_while_busy, name="demand-probe")
            prober.start()
            try:
                _, nbytes, _ = epoch(paths, HintedSampler(paths, sampler=_Order(order)))
            finally:
                done.set()
                prober.join()
            assert nbytes == n * self.sizes.file_bytes, nbytes
            for name, url in probes[len(busy) : 2 * len(busy)]:
                time.sleep(PROBE_GAP_S)
                idle.append(probe(name, url))
            self.snapshot_counters(m, "wan_demand")
        if busy and idle:
            self.fig["wan_demand_probes"] = len(busy)
            self.fig["wan_demand_busy_ms"] = statistics.median(t for t, _ in busy) * 1000
            self.fig["wan_demand_idle_ms"] = statistics.median(t for t, _ in idle) * 1000
            self.fig["wan_demand_busy_ratio"] = self.fig["wan_demand_busy_ms"] / self.fig["wan_demand_idle_ms"]
            self.fig["wan_demand_direct_busy_ms"] = statistics.median(d for _, d in busy) * 1000
            self.fig["wan_demand_direct_idle_ms"] = statistics.median(d for _, d in idle) * 1000

    def phase_cp(self) -> None:
        """``encordfs cp`` of the epoch dataset (2,000 × 100 KiB) with its defaults, over the capped link."""
        n = self.sizes.epoch_count
        log(f"cp: encordfs cp of {n} files")
        dest, cache = self.work / "cp-dest", self.work / "cp-cache"
        ca = ("--ca-file", str(self.pki.ca_file))
        copy_s, _, copied, line = infra.encordfs_cp(self.emu, "encord://epoch", dest, cache, *ca)
        assert copied == n, line
        for src in self.src["epoch"][:: max(1, n // 25)]:
            assert (dest / "epoch" / src.name).read_bytes() == src.read_bytes(), f"cp: wrong bytes in {src.name}"
        self.fig["wan_cp_files_s"] = n / copy_s
        self.fig["wan_cp_link"] = self.fig["wan_cp_files_s"] * self.sizes.file_bytes * 8 / self.regime.rate_bit_s
        self.notes.append(f"wan cp: {line}")
        shutil.rmtree(dest, ignore_errors=True)

    def phase_big(self) -> None:
        size = self.sizes.big_bytes
        cap = self.regime.rate_bit_s / 8
        log(f"big: {size // MiB} MiB cold through the mount")
        with mounted(self.mount) as m:
            path = m.path / "big" / "big.pdf"
            os.listdir(path.parent)
            with self.measured(m, "wan_big", size // MiB):
                secs, n = infra_read_whole(path)
            self.snapshot_counters(m, "wan_big")
        assert n == size, (n, size)
        self.fig["wan_big_mount_MBps"] = n / secs / 1e6
        self.fig["wan_big_link"] = n / secs / cap
        log("big: one direct streaming GET")
        t0 = time.perf_counter()
        got = 0
        with httpx.Client(timeout=120, verify=self.verify) as client, client.stream("GET", self.urls["big"][0]) as r:
            r.raise_for_status()
            for chunk in r.iter_raw(1 << 20):
                got += len(chunk)
        assert got == size, got
        self.fig["wan_big_direct_MBps"] = got / (time.perf_counter() - t0) / 1e6

    def phase_ttfb(self) -> None:
        k = self.sizes.ttfb_files
        rng = random.Random(29)
        picks = rng.sample(range(1, len(self.src["epoch"])), k + 1)
        names = [self.src["epoch"][i].name for i in picks]
        log(f"ttfb: open + 4 KiB of {k} cold files through a fresh mount, and direct GETs")
        with mounted(self.mount) as m:
            folder = m.path / "epoch"
            os.listdir(folder)
            first = _first_4k(folder / names[0])  # the folder's first open: signs it (and its neighbours)
            times = [_first_4k(folder / name) for name in names[1:]]
            self.snapshot_counters(m, "wan_ttfb")
        self.fig["wan_ttfb_first_ms"] = first * 1000
        self.fig["wan_ttfb_ms"] = statistics.median(times) * 1000
        urls = [self.urls["epoch"][i] for i in picks]
        with httpx.Client(timeout=60, verify=self.verify) as client:
            _direct(client, self.urls["epoch"][0], 4096)  # the connection and its TLS session: warm
            direct = [_direct(client, url, 4096) for url in urls[1:]]
        self.fig["wan_ttfb_direct_ms"] = statistics.median(direct) * 1000
        self.fig["wan_ttfb_ratio"] = self.fig["wan_ttfb_ms"] / self.fig["wan_ttfb_direct_ms"]


def infra_read_whole(path: Path) -> tuple[float, int]:
    buf = bytearray(MiB)
    n = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            n += k
    return time.perf_counter() - t0, n


def _first_4k(path: Path) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert len(os.pread(fd, 4096, 0)) == 4096
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def _direct(client: httpx.Client, url: str, length: int | None = None) -> float:
    """Seconds for one direct GET of ``url``: its first ``length`` bytes (a range GET), or all of it."""
    headers = {"Range": f"bytes=0-{length - 1}"} if length else {}
    t0 = time.perf_counter()
    with client.stream("GET", url, headers=headers) as r:
        r.raise_for_status()
        got = sum(len(chunk) for chunk in r.iter_raw())
    assert length is None or got == length, got
    return time.perf_counter() - t0


def run_inside(
    result: Path, quick: bool, phases: set[str], mount_args: list[str], profile: bool = False, regime: Regime = Regime()
) -> int:
    """The child's entry point (``--in-netns RESULT``): measure, write figures, notes and counters."""
    sizes = WAN_QUICK if quick else WAN_FULL
    (infra.REPO / "benchmarks" / "out").mkdir(parents=True, exist_ok=True)
    with Cleanup() as stack:
        bench = WanBench(stack, sizes, regime, mount_args, profile)
        try:
            bench.run(phases)
        finally:
            result.write_text(json.dumps({"fig": bench.fig, "notes": bench.notes, "counters": bench.counters}))
    return 0
