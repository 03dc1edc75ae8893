"""Every Redis key a mount uses, under one namespace per encordfs format and Encord account.

``namespace(domain, account_id, include_org_access)`` is ``encordfs:<FORMAT>:<account hash>``:

- ``FORMAT`` names the format of everything stored (this package's values, the folder image format
  and the catalog schema that images copy into, which also fixes the naming rules): data written by
  an encordfs whose format differs is under another prefix, so it is never read.
- the account hash is sha256 of the domain, the account's key fingerprint (sha256 of its SSH public
  key) and whether organisation-wide datasets are listed: no node ever reads rows or signed URLs that
  another account (or another view of one) put there. Nothing else separates accounts: a Redis shared
  by several accounts must trust every node that holds any of their keys.

Under it (``{ns}``)::

    {ns}:f:{folder}:m                the folder's manifest (JSON; ``folders``)
    {ns}:f:{folder}:fresh            its version while fresh (PX = the cluster's refresh period)
    {ns}:f:{folder}:lease            the node loading it from Encord now
    {ns}:f:{folder}:c:{version}:{i}  chunk i of that version's compressed image
    {ns}:u:{handle}                  a signed URL (PX = its expiry minus the margin; ``signing``)
    {ns}:ul:{handle}                 the node signing it now
    {ns}:b:{digest}                  a block (``blocks``); {ns}:bl:{digest} the node fetching it now
    {ns}:landed                      hash: row uid -> its latest landed state (``landed``)
    {ns}:landed:feed                 channel: landed writes, as they land

``folder`` is ``root`` or a dataset's uid; ``handle`` an ``encordfs.backend`` handle.
"""

from __future__ import annotations

import hashlib

from encordfs.core import catalog, images

CLUSTER_FORMAT = 1
FORMAT = f"{CLUSTER_FORMAT}.{images.FORMAT}.{catalog.SCHEMA_VERSION}"


def namespace(domain: str, account_id: str, include_org_access: bool) -> str:
    account = hashlib.sha256(f"{domain}\n{account_id}\n{int(include_org_access)}".encode()).hexdigest()[:32]
    return f"encordfs:{FORMAT}:{account}"


class Keys:
    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.landed = f"{ns}:landed"
        self.landed_feed = f"{ns}:landed:feed"

    def manifest(self, folder: str) -> str:
        return f"{self.ns}:f:{folder}:m"

    def fresh(self, folder: str) -> str:
        return f"{self.ns}:f:{folder}:fresh"

    def folder_lease(self, folder: str) -> str:
        return f"{self.ns}:f:{folder}:lease"

    def chunk(self, folder: str, version: str, index: int) -> str:
        return f"{self.ns}:f:{folder}:c:{version}:{index}"

    def url(self, handle: str) -> str:
        return f"{self.ns}:u:{handle}"

    def url_lease(self, handle: str) -> str:
        return f"{self.ns}:ul:{handle}"

    def block(self, digest: str) -> str:
        return f"{self.ns}:b:{digest}"

    def block_lease(self, digest: str) -> str:
        return f"{self.ns}:bl:{digest}"
