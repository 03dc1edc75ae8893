"""Extended attributes: which names a node has and what their values are.

Namespace ``user.encord.``. Read-only names are the fields the catalog stored for the node
(every ``DataRow`` field for rows, the ``ImageData`` fields for group members, the dataset's fields
for dataset folders). Values are UTF-8: strings as they are, everything else as JSON (numbers,
``true``/``false``, ``null``), so ``getfattr -d`` shows every field, null ones included.
``user.encord.client_metadata`` is the row's metadata as compact JSON, and ``user.encord.meta.<key>``
each top-level key's value as JSON.

Names outside ``user.`` (``security.selinux``, ``system.posix_acl_access``, which ``ls -l`` asks for
every entry) are answered by ``is_foreign`` before any lock or I/O.
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "user.encord."
CLIENT_METADATA = PREFIX + "client_metadata"
META_PREFIX = PREFIX + "meta."


def is_foreign(name: str) -> bool:
    """True for namespaces encordfs never stores (answered ENOTSUP so tools stop asking)."""
    return not name.startswith("user.")


def encode(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def attributes(fields: dict[str, Any], title: str | None, metadata: dict[str, Any] | None, *, has_metadata: bool) -> dict[str, bytes]:
    """Every xattr of a node, name → value."""
    out = {PREFIX + k: encode(v) for k, v in fields.items()}
    if title is not None:
        out[PREFIX + "title"] = title.encode()
    if has_metadata:
        out[CLIENT_METADATA] = encode(metadata if metadata is not None else {})
        for key, value in (metadata or {}).items():
            out[META_PREFIX + key] = compact_json(value).encode()
    return out
