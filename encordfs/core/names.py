"""Names in the tree: how an Encord title becomes a safe, unique file name.

The rules, applied in order (docs/SEMANTICS.md repeats them; ``tests/test_names.py`` checks them
with hypothesis):

1. ``/`` becomes ``∕`` (U+2215 DIVISION SLASH, which reads like a slash); NUL is removed; other
   control characters (U+0001–U+001F, U+007F) become ``_``. Leading and trailing white space is
   removed.
2. An empty result becomes ``untitled``; ``.``, ``..`` and ``.encordfs`` (the hidden control folder)
   get a ``_`` in front, and so does a name starting with ``@`` (``@x.jpg`` → ``_@x.jpg``): ``@`` names
   in a dataset folder are its views by metadata key (``core.views``), so no row may take one.
3. A file whose title has no extension gets one from its MIME type (``image/jpeg`` and the
   non-standard ``image/jpg`` → ``.jpg``, ``image/x-png`` → ``.png``, ...); a DICOM slice always gets
   ``.dcm`` (its type is taken as ``application/dicom``); folders (datasets, groups) never get one.
4. A name longer than 255 bytes (UTF-8) is cut on a character boundary, keeping the extension.
5. Uniqueness is per folder and ignores case and Unicode normalization (``Dog.png`` and
   ``dog.png`` collide, and so do the NFC and NFD spellings of ``é.png``), so a copy to a
   case-insensitive or normalizing disk (macOS) loses nothing. The first row to claim a name keeps
   it; any later one gets ``stem~<first 8 characters of its id>.ext`` (16, then 64 characters if
   even that collides, then ``stem~<id>~2.ext``, ``~3``, ... until one is free: titles crafted to
   take every ``~id`` form cannot leave a row without a name). A name keeps the title's own code
   points for display; a lookup by another normalization of it (NFC for NFD, or the reverse) finds
   it, while lookups stay case-sensitive.
6. Names are sticky: the catalog remembers them, so a row keeps its name while other rows are added
   or removed; it changes only when the row's own title changes.
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME_BYTES = 255
RESERVED = ".encordfs"  # the mount's hidden control folder
VIEW_MARK = "@"  # names starting with it are views by metadata key (``core.views``), never rows
UNTITLED = "untitled"
SLASH_STANDIN = "\u2215"
_CONTROL = re.compile(r"[\x01-\x1f\x7f]")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,5}(\.gz)?$")

# MIME type → extension, for titles without one. Common types first, then the non-standard aliases
# services and browsers send (Encord sends ``image/jpg``: docs/RECORDED-SHAPES.md), which the
# ``mimetypes`` fallback does not know; parameters (``; charset=...``) and case are ignored.
_MIME_EXT = {
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/x-png": ".png",
    "image/apng": ".png",
    "image/x-ms-bmp": ".bmp",
    "image/x-bmp": ".bmp",
    "image/x-windows-bmp": ".bmp",
    "image/tif": ".tiff",
    "image/x-tiff": ".tiff",
    "image/x-webp": ".webp",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "image/gif": ".gif",
    "image/avif": ".avif",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "video/x-m4v": ".m4v",
    "video/avi": ".avi",
    "video/x-msvideo": ".avi",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/vnd.wave": ".wav",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/x-mp3": ".mp3",
    "audio/mpeg3": ".mp3",
    "audio/x-mpeg-3": ".mp3",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/ogg": ".ogg",
    "audio/mp4": ".m4a",
    "audio/x-m4a": ".m4a",
    "application/x-pdf": ".pdf",
    "text/json": ".json",
    "text/x-json": ".json",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
    "application/json": ".json",
    "text/html": ".html",
    "application/xml": ".xml",
    "text/xml": ".xml",
    "application/dicom": ".dcm",
    "application/x-dicom": ".dcm",
    "application/x-nifti": ".nii",
}


def extension_for(mime_type: str | None) -> str:
    if not mime_type:
        return ""
    mime = mime_type.split(";")[0].strip().lower()
    if mime in _MIME_EXT:
        return _MIME_EXT[mime]
    import mimetypes

    return mimetypes.guess_extension(mime) or ""


def split_ext(name: str) -> tuple[str, str]:
    """``a.tar.gz`` style aware split: ``("scan", ".nii.gz")``; no extension → ``(name, "")``."""
    m = _EXTENSION.search(name)
    if not m or m.start() == 0:
        return name, ""
    return name[: m.start()], name[m.start() :]


def _fit(stem: str, tail: str) -> str:
    """``stem + tail`` cut to MAX_NAME_BYTES by shortening the stem on a character boundary."""
    budget = MAX_NAME_BYTES - len(tail.encode())
    encoded = stem.encode()
    if len(encoded) > budget:
        stem = encoded[:budget].decode("utf-8", "ignore").rstrip()
    return stem + tail


def base_name(title: str, mime_type: str | None = None, *, is_dir: bool = False) -> str:
    """Rules 1–4: the name a row wants before uniqueness is considered."""
    name = title.replace("/", SLASH_STANDIN).replace("\x00", "")
    name = _CONTROL.sub("_", name).strip()
    if not name:
        name = UNTITLED
    if name in (".", "..") or name.casefold() == RESERVED or name.startswith(VIEW_MARK):
        name = "_" + name
    stem, ext = (name, "") if is_dir else split_ext(name)
    if not is_dir and not ext:
        ext = extension_for(mime_type)
    return _fit(stem, ext)


def disambiguated(base: str, uid: str, *, is_dir: bool = False, width: int = 8) -> str:
    """Rule 5: the name for a row that lost its base name to an earlier one."""
    stem, ext = (base, "") if is_dir else split_ext(base)
    tag = "".join(c for c in uid if c.isalnum())[:width] or "x"
    return _fit(stem, f"~{tag}{ext}")


def name_key(name: str) -> str:
    """What two names must not share within one folder (case- and normalization-insensitive, rule 5)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def same_spelling(a: str, b: str) -> bool:
    """Whether two names differ at most by Unicode normalization (what a lookup forgives)."""
    return a == b or unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)


def numbered(base: str, uid: str, n: int, *, is_dir: bool = False) -> str:
    """Rule 5's last resort: ``stem~<id>~<n>.ext`` for the n-th try (n >= 2)."""
    stem, ext = (base, "") if is_dir else split_ext(base)
    tag = "".join(c for c in uid if c.isalnum())[:64] or "x"
    return _fit(stem, f"~{tag}~{n}{ext}")
