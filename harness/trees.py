"""Import trees for the emulator's ``--import DIR``, written by tests and benchmarks.

``write_labelled(root)`` writes ``root/pets``: small images labelled through client metadata sidecars
(``NAME.metadata.json``: ``label``, ``split``, a nested ``camera.id``), an image group, rows without a
label, and a text row holding CSV. It returns what a mount of it must show, so tests can compare.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

LABELS = ("bird", "cat", "dog")
CSV_TEXT = "name,label,score\ncat_00.png,cat,0.9\ndog_00.png,dog,0.75\nbird_00.png,bird,0.5\n"


@dataclass
class Labelled:
    """What ``write_labelled`` wrote: per dataset row name (a file, or a group folder), its metadata."""

    root: Path
    dataset: str = "pets"
    metadata: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)  # image file (path under the dataset) -> label

    def rows_with(self, key: str, value: Any) -> list[str]:
        return sorted(n for n, m in self.metadata.items() if m is not None and m.get(key) == value)


def _png(color: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def _sidecar(path: Path, metadata: dict[str, Any]) -> None:
    path.with_name(path.name + ".metadata.json").write_text(json.dumps(metadata), encoding="utf-8")


def write_labelled(root: Path, per_label: int = 4) -> Labelled:
    ds = root / "pets"
    ds.mkdir(parents=True)
    out = Labelled(root)
    colors = {"bird": (30, 160, 40), "cat": (200, 40, 40), "dog": (40, 40, 200)}
    for label in LABELS:
        for i in range(per_label):
            name = f"{label}_{i:02d}.png"
            (ds / name).write_bytes(_png(tuple(min(255, c + 9 * i) for c in colors[label])))  # type: ignore[arg-type]
            meta = {"label": label, "split": "val" if i == 0 else "train", "camera": {"id": f"cam-{i % 2}"}}
            _sidecar(ds / name, meta)
            out.metadata[name] = meta
            out.images[name] = label
    for name in ("unlabelled_0.png", "unlabelled_1.png"):  # no label: in no value folder of @label
        (ds / name).write_bytes(_png((128, 128, 128)))
        out.metadata[name] = None
    (ds / "burst").mkdir()
    for k in range(3):
        (ds / "burst" / f"frame{k + 1}.png").write_bytes(_png((200, 60 + 40 * k, 60)))
        out.images[f"burst/frame{k + 1}.png"] = "cat"
    _sidecar(ds / "burst", {"label": "cat", "split": "train"})
    out.metadata["burst"] = {"label": "cat", "split": "train"}
    (ds / "table.txt").write_text(CSV_TEXT, encoding="utf-8")
    _sidecar(ds / "table.txt", {"kind": "table"})
    out.metadata["table.txt"] = {"kind": "table"}
    return out
