"""Synthetic datasets at scale: a million IMAGE rows without a million files.

``--generate TITLE:ROWS[:BYTES]`` (``encordfs emulator``) and ``Store.ingest_synthetic`` create a
dataset of ``ROWS`` IMAGE rows titled ``img_0000001.jpg`` … (``image/jpeg``, width and height set,
client metadata ``{"i": n, "split": "train"|"val"|"test"}``) whose bytes are never stored.

Blob keys: ``synthetic:<seed>:<size>``. The blob server recognises the prefix and generates the
bytes on the fly; nothing is written under ``blobs/``. ``seed`` is unique per item (a tag of the
dataset hash and the row number), so the ``items.blob_key`` UNIQUE constraint holds and two rows
never share content.

Bytes: a cheap deterministic function of (seed, offset). The object is cut into ``BLOCK_BYTES``
blocks; block ``b`` is ``SHAKE-128("<seed>/<b>")`` stretched to the block size. Any byte range is
therefore computable without the bytes before it (Range requests cost what they return, plus at
most one partial block on each side), the same on every run and every machine, and different for
every row (so a block cache keyed by the wrong item would be caught by a checksum).

Ingest speed: rows come from a generator of plain tuples consumed by ``executemany`` in one
transaction with explicit item ids, so 1,000,000 rows are two bulk statements, no per-row query,
no file system work (see ``Store.ingest_synthetic``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

PREFIX = "synthetic:"
DEFAULT_SIZE_BYTES = 1024
BLOCK_BYTES = 64 * 1024
MIME_TYPE = "image/jpeg"
SOURCE = "synthetic"  # the ``imports.source`` of generated datasets (idempotence per title)
_SPLITS = ("train",) * 8 + ("val", "test")


@dataclass(frozen=True)
class GenerateSpec:
    """One ``--generate`` request."""

    title: str
    rows: int
    size_bytes: int = DEFAULT_SIZE_BYTES


def parse_spec(text: str) -> GenerateSpec:
    """``TITLE:ROWS[:BYTES]``; the title may itself contain ``:`` (the numbers are taken from the end).

    Raises ``ValueError`` with a one-line message for anything else.
    """
    parts = text.rsplit(":", 2)
    numbers: list[int] = []
    while len(parts) > 1 and parts[-1].isdigit() and len(numbers) < 2:
        numbers.insert(0, int(parts.pop()))
    title = ":".join(parts)
    if not title or not numbers:
        raise ValueError(f"--generate wants TITLE:ROWS[:BYTES], got {text!r}")
    rows = numbers[0]
    size = numbers[1] if len(numbers) > 1 else DEFAULT_SIZE_BYTES
    if rows < 0 or size < 0:
        raise ValueError(f"--generate {text!r}: ROWS and BYTES must be >= 0")
    return GenerateSpec(title, rows, size)


def blob_key(seed: str, size_bytes: int) -> str:
    return f"{PREFIX}{seed}:{size_bytes}"


def parse_key(key: str) -> tuple[str, int] | None:
    """(seed, size) of a synthetic blob key; None for any other key."""
    if not key.startswith(PREFIX):
        return None
    seed, _, size = key[len(PREFIX) :].rpartition(":")
    if not seed or not size.isdigit():
        return None
    return seed, int(size)


def _block(seed: str, index: int, length: int) -> bytes:
    return hashlib.shake_128(f"{seed}/{index}".encode()).digest(length)


def read(seed: str, size_bytes: int, offset: int, length: int) -> bytes:
    """Bytes ``[offset, offset+length)`` of the synthetic object (clipped to its size)."""
    return b"".join(iter_range(seed, size_bytes, offset, length))


def iter_range(seed: str, size_bytes: int, offset: int, length: int) -> Iterator[bytes]:
    """The same bytes as ``read``, one block (at most ``BLOCK_BYTES``) at a time."""
    end = min(size_bytes, offset + length)
    pos = max(0, offset)
    while pos < end:
        index, start = divmod(pos, BLOCK_BYTES)
        block_len = min(BLOCK_BYTES, size_bytes - index * BLOCK_BYTES)
        stop = min(block_len, end - index * BLOCK_BYTES)
        yield _block(seed, index, block_len)[start:stop]
        pos = index * BLOCK_BYTES + stop


def title(n: int) -> str:
    return f"img_{n:07d}.jpg"


def metadata_json(n: int) -> str:
    """Compact JSON client metadata of row ``n`` (built as text: no dict per row)."""
    return f'{{"i":{n},"split":"{_SPLITS[n % len(_SPLITS)]}"}}'


def dimensions(n: int) -> tuple[int, int]:
    return 640 + 32 * (n % 4), 480 + 24 * (n % 3)


__all__ = [
    "BLOCK_BYTES",
    "DEFAULT_SIZE_BYTES",
    "MIME_TYPE",
    "PREFIX",
    "SOURCE",
    "GenerateSpec",
    "blob_key",
    "dimensions",
    "iter_range",
    "metadata_json",
    "parse_key",
    "parse_spec",
    "read",
    "title",
]
