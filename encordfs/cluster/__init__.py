"""Cluster mode (``--shared redis://HOST:PORT/DB``): N nodes that mount the same Encord account cost
Encord what one node does. Redis (or Valkey) is the shared layer; without ``--shared`` nothing here
is imported.

Design: every shared piece sits behind a seam the core already has, so the core knows nothing of Redis
and a mount without ``--shared`` runs exactly the code it ran before.

=========================  ===========================================================================
what is shared             where it plugs in
=========================  ===========================================================================
listings (root, datasets)  ``folders.SharedFolders``, the core's ``FolderLoader``: one node loads a
                           folder from Encord under a lease and publishes it as a folder image
                           (``core.images``); the others adopt or sync that image
signed URLs                ``signing.SharedBackend``, a ``Backend`` whose ``sign`` goes through a map
                           of URLs in Redis, signed once per cluster under per-handle leases
file blocks (optional)     ``blocks.SharedBlockCache``, a ``BlockCache`` tier between the node's own
                           tiers and the origin (``--shared-blocks``)
landed writes              ``landed.LandedFeed``: ``on_landed`` publishes, a subscriber applies other
                           nodes' landed rows to the local catalog (``Catalog.set_rows_state``)
=========================  ===========================================================================

Writes stay local and durable: each node's journal pushes its own edits. Group members (image groups,
DICOM series) are listed by each node itself.

Degrade, never fail: ``link.RedisLink`` bounds every command (``shared_timeout_s``) and turns any
trouble into ``SharedDown``; each piece then does what a mount without a cluster does (load from
Encord, sign directly, fetch from the origin). One log line per outage, counters (``shared.*``), and
the node rejoins when Redis answers again. Nothing read from Redis is used before its checksum and
format are checked. A mount told to share that cannot reach Redis at start fails (one line, exit 1).

Keys live under a namespace per format and account (``keys.namespace``): another encordfs version's
data, or another account's, is never read.

Counters (``/.encordfs/status.json``, ``encordfs status``, ``/metrics``): ``shared.catalog_hits``
(a folder's refresh answered by a fresh published listing it already had), ``shared.snapshot_loads``
(published listings taken), ``shared.snapshot_publishes``, ``shared.snapshot_rejected``,
``shared.leases_taken``, ``shared.leases_waited``, ``shared.url_hits``, ``shared.url_misses``,
``shared.urls_published``, ``shared.block_hits``, ``shared.block_hit_bytes``, ``shared.block_misses``,
``shared.blocks_published``, ``shared.block_bytes_published``, ``shared.block_rejected``,
``shared.block_skipped``, ``shared.landed_published``, ``shared.landed_applied``,
``shared.landed_rejected``, ``shared.degraded_events``, ``shared.rejoins``, ``shared.redis_errors``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from encordfs import errors
from encordfs.backend import Backend, PushOutcome
from encordfs.core.blockcache import BlockCache
from encordfs.core.catalog import Catalog
from encordfs.core.counters import Counters
from encordfs.settings import Settings

if TYPE_CHECKING:
    from encordfs.cluster.blocks import SharedBlockCache

__all__ = ["Cluster"]


class Cluster:
    """The shared layer of one mount: built by ``app.build`` when ``settings.shared`` is set."""

    def __init__(self, settings: Settings, account_id: str, counters: Counters, cache_dir: Path) -> None:
        try:
            import zstandard  # noqa: F401
        except ImportError:
            raise errors.InvalidValue("--shared needs the cluster extra: pip install 'encordfs[cluster]'") from None
        from encordfs.cluster import landed
        from encordfs.cluster.keys import Keys, namespace
        from encordfs.cluster.link import RedisLink

        assert settings.shared is not None
        password = settings.redis_password.get_secret_value() if settings.redis_password is not None else None
        self.settings = settings
        self.counters = counters
        self.keys = Keys(namespace(settings.domain, account_id, settings.include_org_access))
        self.link = RedisLink(
            settings.shared,
            password=password,
            timeout_s=settings.shared_timeout_s,
            counters=counters,
            ca_file=settings.ca_file,
        )
        self.work_dir = cache_dir / "shared"
        self.feed = landed.LandedFeed(self.link, self.keys, counters, landed.node_id())
        self._folders: Any = None
        self._blocks: SharedBlockCache | None = None

    def connect(self) -> None:
        """Reach Redis now, or fail with one line (a mount told to share must not start alone)."""
        self.link.connect()
        if self.settings.shared_blocks:
            self.link.warn_if_unbounded()
        shutil.rmtree(self.work_dir, ignore_errors=True)  # downloads and exports of an earlier mount
        self.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    # -- the pieces, each behind a core seam

    def backend(self, inner: Backend) -> Backend:
        from encordfs.cluster.signing import SharedBackend

        return SharedBackend(inner, self.link, self.keys, self.counters)

    def block_tier(self, local: BlockCache) -> BlockCache:
        """``local`` with the shared tier behind it when ``--shared-blocks``; else ``local`` itself."""
        if not self.settings.shared_blocks:
            return local
        from encordfs.cluster.blocks import SharedBlockCache

        self._blocks = SharedBlockCache(local, self.link, self.keys, self.counters, self.settings.shared_block_limit)
        return self._blocks

    def folder_loader(self, catalog: Catalog) -> Any:
        from encordfs.cluster.folders import SharedFolders

        self._folders = SharedFolders(
            self.link, self.keys, catalog, self.counters, self.work_dir, self.settings.metadata_ttl,
            on_image=self.feed.catch_up,
        )  # fmt: skip
        return self._folders

    def start_feed(self, catalog: Catalog, title_view: Callable[[str, str], str] | None) -> None:
        self.feed.start(catalog, title_view)

    def stop_feed(self) -> None:
        self.feed.close()

    def landed(self, outcomes: list[PushOutcome]) -> None:
        self.feed.publish(outcomes)

    def status(self) -> dict[str, Any]:
        return {
            "redis": self.link.where,
            "up": self.link.up,
            "namespace": self.keys.ns,
            "blocks": self.settings.shared_blocks,
        }

    def close(self) -> None:
        self.feed.close()
        if self._folders is not None:
            self._folders.close()
        if self._blocks is not None:
            self._blocks.stop()  # the local tiers are closed by the mount
        self.link.close()
