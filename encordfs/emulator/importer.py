"""The emulator's ``--import DIR``: a folder tree on disk turned into ``list[DatasetSpec]``.

Owns ``scan(root) -> list[DatasetSpec]`` and ``natural_key(name)``.

Layout and rules
----------------
``root/<dataset>/<file>`` is a single-file row; ``root/<dataset>/<folder>/<file>`` is a member of a
composite row (image group, image sequence, DICOM series)::

    root/
      street/                      -> dataset "street"
        a.jpg                      -> IMAGE row "a.jpg"
        a.jpg.metadata.json        -> client metadata of "a.jpg" (never a row itself)
        burst/                     -> IMG_GROUP row "burst" (its images, natural order)
          frame2.png, frame10.png
        burst.metadata.json        -> client metadata of "burst"
        timelapse/                 -> image sequence (because of the marker file)
          .image-sequence, 001.jpg, 002.jpg
        ct/                        -> DICOM series (because it holds .dcm files)
          1.dcm, 2.dcm

* **Datasets**: each subdirectory of ``root`` (hidden ones excepted) is a dataset titled by its
  name. An empty dataset directory gives a dataset with no rows. Files directly in ``root`` are
  skipped with a warning.
* **Rows**: every regular file of a dataset directory whose extension ``media.probe`` knows is a row
  titled by its file name and typed from its bytes. Unknown extensions, unreadable files (OSError)
  and special files (fifos, sockets, broken symlinks) are skipped with a warning. A file the prober
  cannot parse is still imported, with null media fields (``probe`` warns).
* A lone ``.dcm`` file in a dataset directory becomes a one-slice DICOM series titled by its name
  (an Encord DICOM row is always a series).
* **Sidecars**: ``NAME.metadata.json`` beside a file or folder ``NAME`` is that row's (or group
  member's) client metadata. It must hold a JSON object; anything else, or an unreadable file, is a
  warning and the row gets no metadata. A sidecar is never a row; one without a ``NAME`` beside it
  is skipped with a warning.
* **Folders**: a folder holding ``.dcm`` files is a DICOM series (``dicom_series``): its slices are
  ordered by InstanceNumber, slices without one last, ties by name; its other files are skipped with
  a warning, and an ``.image-sequence`` marker is ignored with a warning; slices from several
  SeriesInstanceUIDs are kept together but warned about. Otherwise a folder holding images is an
  image group (``image_group``), or an image sequence (``image_sequence``) when it contains a marker
  file named ``.image-sequence``; its members are its images in natural name order (``frame2``
  before ``frame10``) and its non-image files are skipped with a warning (a sequence whose frames
  differ in size is also warned about). A folder with neither images nor DICOM (empty, or only
  other media) gives no row and a warning. Folders nested inside a group folder are skipped with
  a warning: there is no deeper structure.
* **Hidden entries** (names starting with ``.``) are skipped everywhere, silently; the only hidden
  name with a meaning is the ``.image-sequence`` marker.
* **Symlinks** are followed, for files and directories (the tree is at most three levels deep, so
  a directory loop cannot recurse). ``FileSpec.path`` is the resolved real path.
* **Order** is deterministic: datasets, rows and group members sort by ``natural_key`` of their names
  (digit runs compare as numbers, case-insensitively, ties by the exact name).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, cast

from encordfs.emulator import media
from encordfs.emulator.sample import GroupKind
from encordfs.emulator.spec import DatasetSpec, FileSpec, GroupSpec, MediaInfo

log = logging.getLogger(__name__)

__all__ = ["SEQUENCE_MARKER", "SIDECAR_SUFFIX", "natural_key", "scan"]

SIDECAR_SUFFIX = ".metadata.json"
SEQUENCE_MARKER = ".image-sequence"

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[list[str | int], str]:
    """Sort key: digit runs as numbers, text case-insensitively, ties broken by the exact name."""
    parts = _DIGITS.split(name)  # text, digits, text, digits, ... (always text at even indexes)
    return [int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)], name


def _entries(directory: Path) -> list[Path]:
    """Visible entries of ``directory`` in natural order."""
    return sorted((p for p in directory.iterdir() if not p.name.startswith(".")), key=lambda p: natural_key(p.name))


def _is_sidecar(path: Path) -> bool:
    return path.name.endswith(SIDECAR_SUFFIX) and len(path.name) > len(SIDECAR_SUFFIX)


def _load_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("ignoring metadata sidecar %s: %s", path, exc)
        return None
    if not isinstance(value, dict):
        log.warning("ignoring metadata sidecar %s: it holds a JSON %s, not an object", path, type(value).__name__)
        return None
    return value


class _Folder:
    """One directory's visible entries split into sidecars and the rest."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.items: list[Path] = []
        self.sidecars: dict[str, Path] = {}
        for entry in _entries(directory):
            if _is_sidecar(entry):
                self.sidecars[entry.name[: -len(SIDECAR_SUFFIX)]] = entry
            else:
                self.items.append(entry)
        names = {p.name for p in self.items}
        for target, sidecar in self.sidecars.items():
            if target not in names:
                log.warning("skipping metadata sidecar %s: there is no %r beside it", sidecar, target)

    def metadata_for(self, name: str) -> dict[str, Any] | None:
        sidecar = self.sidecars.get(name)
        return _load_sidecar(sidecar) if sidecar is not None else None


def _probe_file(path: Path) -> MediaInfo | None:
    """MediaInfo of a regular file, or None (with a warning) if it is to be skipped."""
    if not path.is_file():
        log.warning("skipping %s: not a regular file (special file or broken symlink)", path)
        return None
    try:
        info = media.probe(path)
    except OSError as exc:
        log.warning("skipping %s: cannot read it (%s)", path, exc)
        return None
    if info is None:
        log.warning("skipping %s: unknown file type %r", path, path.suffix or path.name)
    return info


def _group(directory: Path, metadata: dict[str, Any] | None) -> GroupSpec | None:
    inner = _Folder(directory)
    marker = (directory / SEQUENCE_MARKER).exists()
    members: list[tuple[Path, MediaInfo]] = []
    for entry in inner.items:
        if entry.is_dir():
            log.warning("skipping %s: folders inside a group folder are not imported", entry)
            continue
        info = _probe_file(entry)
        if info is not None:
            members.append((entry, info))

    def spec(path: Path, info: MediaInfo) -> FileSpec:
        return FileSpec(title=path.name, path=path.resolve(), media=info, client_metadata=inner.metadata_for(path.name))

    dicom = [(p, i) for p, i in members if i.data_type == "DICOM"]
    if dicom:
        for p, i in members:
            if i.data_type != "DICOM":
                log.warning("skipping %s: DICOM series folder %s holds a %s file", p, directory, i.data_type)
        if marker:
            log.warning("ignoring %s in %s: a folder of .dcm files is a DICOM series", SEQUENCE_MARKER, directory)
        return _dicom_series(directory.name, [spec(p, i) for p, i in dicom], metadata)

    images = [(p, i) for p, i in members if i.data_type == "IMAGE"]
    for p, i in members:
        if i.data_type != "IMAGE":
            log.warning("skipping %s: image group folder %s holds a %s file", p, directory, i.data_type)
    if not images:
        log.warning("skipping folder %s: it holds no images and no DICOM files", directory)
        return None
    kind = "image_sequence" if marker else "image_group"
    if marker:
        sizes = {(i.width, i.height) for _, i in images if i.width is not None}
        if len(sizes) > 1:
            log.warning("image sequence %s mixes frame sizes %s", directory, sorted(sizes))
    return GroupSpec(
        title=directory.name,
        kind=cast(GroupKind, kind),
        children=[spec(p, i) for p, i in images],
        client_metadata=metadata,
    )


def _dicom_series(title: str, slices: list[FileSpec], metadata: dict[str, Any] | None) -> GroupSpec:
    numbered: list[tuple[tuple[int, int, tuple[list[str | int], str]], FileSpec]] = []
    for s in slices:
        header = media.read_dicom_header(s.path) if s.media.dicom_instance_uid is not None else None
        number = header.instance_number if header is not None else None
        rank = (0, number, natural_key(s.title)) if number is not None else (1, 0, natural_key(s.title))
        numbered.append((rank, s))
    numbered.sort(key=lambda pair: pair[0])
    series_uids = {s.media.dicom_series_uid for s in slices if s.media.dicom_series_uid}
    if len(series_uids) > 1:
        log.warning("DICOM series %r mixes %d SeriesInstanceUIDs", title, len(series_uids))
    return GroupSpec(title=title, kind="dicom_series", children=[s for _, s in numbered], client_metadata=metadata)


def _dataset(directory: Path) -> DatasetSpec:
    folder = _Folder(directory)
    rows: list[FileSpec | GroupSpec] = []
    for entry in folder.items:
        metadata = folder.metadata_for(entry.name)
        if entry.is_dir():
            group = _group(entry, metadata)
            if group is not None:
                rows.append(group)
            continue
        info = _probe_file(entry)
        if info is None:
            continue
        if info.data_type == "DICOM":
            slice_spec = FileSpec(title=entry.name, path=entry.resolve(), media=info)
            rows.append(_dicom_series(entry.name, [slice_spec], metadata))
        else:
            rows.append(FileSpec(title=entry.name, path=entry.resolve(), media=info, client_metadata=metadata))
    if not rows:
        log.info("dataset folder %s holds nothing to import; it becomes an empty dataset", directory)
    return DatasetSpec(title=directory.name, rows=rows)


def scan(root: Path) -> list[DatasetSpec]:
    """Import the folder tree under ``root`` (see the module docstring for the layout and rules)."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"import root {root} is not a directory")
    datasets: list[DatasetSpec] = []
    for entry in _entries(root):
        if entry.is_dir():
            datasets.append(_dataset(entry))
        else:
            log.warning(
                "skipping %s: files directly in the import root belong to no dataset; put them in a dataset folder",
                entry,
            )
    return datasets
