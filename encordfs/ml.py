"""Images under a mounted folder as a map-style dataset, labelled from Encord client metadata.

``EncordImages(root, label_key="split")`` lists the image files under ``root`` (a dataset folder, or
the whole mount; group folders are walked too) and reads each one's label from the xattr
``user.encord.meta.<label_key>``: the file's own, or else the nearest folder's above it up to
``root`` (a group's metadata labels its members). Images without one get target ``-1``.

It needs no torch: PyTorch's ``DataLoader`` takes any object with ``__len__`` and ``__getitem__``,
and ``ResizeToTensor`` imports torch only when called. Everything is plain paths and ``os.getxattr``,
so the same class works on any local folder (labels are then ``-1``) and is what
``tests/test_ml.py`` and ``benchmarks/ml_epoch.py`` measure.

Order hints: a shuffled epoch reads files in an order only the sampler knows, so the mount cannot
guess the next file and each sample waits one round trip to storage. ``HintedSampler`` wraps any
sampler (or shuffles itself): at the start of every epoch it draws the epoch's order and announces
the paths in that order to the mount (``write_hints``), which then prefetches a bounded window ahead
of the loader's workers. ``write_hints`` writes ``MOUNT/.encordfs/hints`` (one path per line; see
docs/SEMANTICS.md), or uses the mount's control socket when the mount is read-only; paths outside an
encordfs mount are skipped, so the same code runs over a local copy.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
META_XATTR = "user.encord.meta."
_NO_LABEL = (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
log = logging.getLogger(__name__)


def image_files(root: str | Path, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under ``root``, in a stable order (sorted path parts)."""
    out: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        out.extend(Path(folder) / f for f in sorted(files) if Path(f).suffix.lower() in extensions)
    return out


def label_of(path: Path, key: str, root: Path) -> Any:
    """``meta.<key>`` of ``path`` or of the nearest folder above it (up to ``root``); None if none has it."""
    root = Path(root)
    for candidate in [path, *path.parents]:
        try:
            return json.loads(os.getxattr(candidate, META_XATTR + key))
        except OSError as exc:
            if exc.errno not in _NO_LABEL:
                raise
        if candidate == root or candidate == candidate.parent:
            return None
    return None


def load_rgb(source: Any) -> Image.Image:
    """Open and decode an image (a path or a binary file object) as RGB; animated images: first frame."""
    with Image.open(source) as opened:
        opened.seek(0)
        img: Image.Image = opened
        if img.mode in ("P", "PA", "LA", "RGBA", "I;16", "I", "F") and "transparency" in img.info:
            img = img.convert("RGBA")
        return img.convert("RGB")


class ResizeToTensor:
    """PIL RGB image → ``torch.uint8`` tensor C×H×W of a fixed size (so batches stack)."""

    def __init__(self, size: tuple[int, int] = (64, 64)) -> None:
        self.size = size  # (width, height)

    def __call__(self, img: Image.Image) -> Any:
        import numpy as np
        import torch

        array = np.asarray(img.resize(self.size, Image.Resampling.BILINEAR), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1)


class EncordImages:
    """``dataset[i] -> (transform(image), target)``; ``classes`` sorted label values, ``targets`` per file."""

    def __init__(
        self,
        root: str | Path,
        label_key: str = "split",
        transform: Callable[[Image.Image], Any] | None = None,
        classes: list[Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.paths = image_files(self.root)
        self.labels = [label_of(p, label_key, self.root) for p in self.paths]
        self.classes = classes if classes is not None else sorted({str(v) for v in self.labels if v is not None})
        index = {c: i for i, c in enumerate(self.classes)}
        self.targets = [index.get(str(v), -1) if v is not None else -1 for v in self.labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = load_rgb(self.paths[i])
        return (self.transform(img) if self.transform else img), self.targets[i]

    def hinted_sampler(self, shuffle: bool = True, seed: int | None = None) -> HintedSampler:
        """A ``HintedSampler`` over this dataset's files: each epoch's order is announced to the mount."""
        return HintedSampler(self.paths, shuffle=shuffle, seed=seed)


def write_hints(paths: Iterable[str | Path]) -> int:
    """Tell the encordfs mounts holding ``paths`` that they will be read in this order (one hint list
    per mount, replacing nothing: the mount keeps a few lists and retires the oldest). Returns how many
    paths went to a mount; paths outside any encordfs mount are skipped. Never raises for a mount that
    refuses (an old version, prefetch off): hints are advice, the reads work without them."""
    from encordfs import control

    by_mount: dict[str, list[str]] = {}
    roots: dict[str, str | None] = {}
    for path in paths:
        text = os.path.abspath(os.fspath(path))
        folder = os.path.dirname(text)
        if folder not in roots:
            info = control.find(folder)
            roots[folder] = info.mountpoint if info is not None and info.fstype == control.FSTYPE else None
        root = roots[folder]
        if root is not None:
            by_mount.setdefault(root, []).append(text[len(root.rstrip("/")) :])
    sent = 0
    for root, relative in by_mount.items():
        try:
            with open(os.path.join(root, ".encordfs", "hints"), "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write("".join(p + "\n" for p in relative))
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                log.warning("order hints for %s not written: %s", root, exc.strerror)
                continue
            try:  # a read-only mount: the kernel refuses the write before it reaches encordfs
                control.hints(root, relative)
            except Exception as sock_exc:  # advice only: never fail the epoch over it
                log.warning("order hints for %s not sent: %s", root, sock_exc)
                continue
        sent += len(relative)
    return sent


class HintedSampler:
    """A sampler that announces each epoch's order to the mount before yielding it.

    ``HintedSampler(paths, sampler=None, shuffle=True, seed=None)``: each ``iter()`` (one per epoch)
    takes the order from ``sampler`` (any iterable of indices, e.g. ``torch.utils.data.RandomSampler``
    or a ``DistributedSampler``; ``set_epoch`` is passed on) or, without one, a fresh permutation of
    ``range(len(paths))`` (``shuffle``; ``seed`` + epoch makes it repeatable), writes
    ``[paths[i] for i in order]`` as order hints (``write_hints``), then yields the indices. Give it to
    a ``DataLoader`` as ``sampler=`` (with ``shuffle`` off there)::

        data = EncordImages(root)
        loader = DataLoader(data, sampler=HintedSampler(data.paths), num_workers=8, batch_size=32)
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        sampler: Iterable[int] | None = None,
        shuffle: bool = True,
        seed: int | None = None,
    ) -> None:
        self.paths = paths
        self.sampler = sampler
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.hinted = 0  # paths announced at the last epoch's start

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        if self.sampler is not None and hasattr(self.sampler, "__len__"):
            return len(self.sampler)  # type: ignore[arg-type]
        return len(self.paths)

    def __iter__(self) -> Iterator[int]:
        if self.sampler is not None:
            order = [int(i) for i in self.sampler]
        else:
            order = list(range(len(self.paths)))
            if self.shuffle:
                rng = random.Random(None if self.seed is None else self.seed + self.epoch)
                rng.shuffle(order)
            self.epoch += 1
        self.hinted = write_hints(self.paths[i] for i in order)
        return iter(order)
