"""Images under a mounted folder as a map-style dataset, labelled from Encord client metadata.

``EncordImages(root, label_key="split")`` lists the image files under ``root`` (a dataset folder, or
the whole mount; group folders are walked too) and reads each one's label from the xattr
``user.encord.meta.<label_key>``: the file's own, or else the nearest folder's above it up to
``root`` (a group's metadata labels its members). Images without one get target ``-1``.

It needs no torch: PyTorch's ``DataLoader`` takes any object with ``__len__`` and ``__getitem__``,
and ``ResizeToTensor`` imports torch only when called. Everything is plain paths and ``os.getxattr``,
so the same class works on any local folder (labels are then ``-1``) and is what
``tests/test_ml.py`` and ``benchmarks/ml_epoch.py`` measure.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
META_XATTR = "user.encord.meta."
_NO_LABEL = (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)


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
