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


def is_text(name: str) -> bool:
    """False for a name that was not valid UTF-8 (the bindings decode names with surrogateescape)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# One encoder for every value: ``json.dumps`` with options builds a new encoder per call, which was
# most of the cost of a getxattr (``getfattr -d`` asks for ~20 values per file).
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return _compact(value).encode()


def compact_json(value: Any) -> str:
    return _compact(value)


def names(
    fields: dict[str, Any], title: str | None, metadata: dict[str, Any] | None, *, has_metadata: bool
) -> list[str]:
    """Every xattr name of a node, in listing order."""
    out = [PREFIX + k for k in fields]
    if title is not None:
        out.append(PREFIX + "title")
    if has_metadata:
        out.append(CLIENT_METADATA)
        out.extend(META_PREFIX + key for key in (metadata or {}))
    return list(dict.fromkeys(out))


def value(
    name: str, fields: dict[str, Any], title: str | None, metadata: dict[str, Any] | None, *, has_metadata: bool
) -> bytes | None:
    """The value of one xattr of a node, or None if it has no such name. Only that value is encoded;
    where names could coincide, the later kinds in ``names`` win (metadata keys, then the whole
    metadata, then the title, then the stored fields)."""
    if not name.startswith(PREFIX):
        return None
    if has_metadata:
        if name.startswith(META_PREFIX) and metadata and (key := name[len(META_PREFIX) :]) in metadata:
            return compact_json(metadata[key]).encode()
        if name == CLIENT_METADATA:
            return encode(metadata if metadata is not None else {})
    field = name[len(PREFIX) :]
    if field == "title" and title is not None:
        return title.encode()
    if field in fields:
        return encode(fields[field])
    return None
