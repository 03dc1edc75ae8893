"""An image sequence's video, as the real service makes one: the frames turned into a single MP4.

Encord converts an image sequence into a video (``docs/RECORDED-SHAPES.md``); the emulator's recorded
shape needs such a video without ffmpeg. :func:`encode_frames` writes the simplest MP4 that players
decode: one video track of Motion JPEG samples (sample entry ``jpeg``, which ffmpeg and VLC read from
MP4 and MOV alike; browsers do not play it), each frame a baseline JPEG made by Pillow, all samples in
one chunk, ``moov`` before ``mdat`` so the file streams. Frames whose size differs from the first are
resized to it (as the service does: "frames of differing size are resized").

Box layout (ISO/IEC 14496-12): ``ftyp``, ``moov`` (``mvhd``, ``trak`` (``tkhd``, ``mdia`` (``mdhd``,
``hdlr``, ``minf`` (``vmhd``, ``dinf``/``dref``, ``stbl`` (``stsd``, ``stts``, ``stsc``, ``stsz``,
``stco``))))), ``mdat``. Deterministic: the same frames give the same bytes (times are 0).
"""

from __future__ import annotations

import io
import struct
import tempfile
from pathlib import Path

from PIL import Image

from encordfs.emulator import media
from encordfs.emulator.spec import MediaInfo

FPS = 25
JPEG_QUALITY = 90
_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def _jpeg_frames(paths: list[Path]) -> tuple[list[bytes], int, int]:
    frames: list[bytes] = []
    size: tuple[int, int] | None = None
    for path in paths:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        if size is None:
            size = rgb.size
        elif rgb.size != size:
            rgb = rgb.resize(size)
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
        frames.append(out.getvalue())
    if size is None:
        raise ValueError("an image sequence video needs at least one frame")
    return frames, size[0], size[1]


def _moov(sizes: list[int], width: int, height: int, fps: int, chunk_offset: int) -> bytes:
    count = len(sizes)
    movie_ms = count * 1000 // fps
    mvhd = _full_box(
        b"mvhd", 0, 0,
        struct.pack(">IIII", 0, 0, 1000, movie_ms), struct.pack(">IH", 0x00010000, 0x0100), bytes(10),
        _MATRIX, bytes(24), struct.pack(">I", 2),
    )  # fmt: skip
    tkhd = _full_box(
        b"tkhd", 0, 3,
        struct.pack(">IIIII", 0, 0, 1, 0, movie_ms), bytes(8), struct.pack(">hhhH", 0, 0, 0, 0),
        _MATRIX, struct.pack(">II", width << 16, height << 16),
    )  # fmt: skip
    mdhd = _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, fps, count, 0x55C4, 0))  # language "und"
    hdlr = _full_box(b"hdlr", 0, 0, struct.pack(">I", 0), b"vide", bytes(12), b"VideoHandler\x00")
    vmhd = _full_box(b"vmhd", 0, 1, bytes(8))
    dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))
    name = b"Photo - JPEG"
    sample_entry = _box(
        b"jpeg",
        bytes(6), struct.pack(">H", 1),  # reserved, data_reference_index
        bytes(16), struct.pack(">HH", width, height), struct.pack(">II", 0x00480000, 0x00480000),
        bytes(4), struct.pack(">H", 1), bytes([len(name)]) + name + bytes(31 - len(name)),
        struct.pack(">Hh", 0x0018, -1),
    )  # fmt: skip
    stbl = _box(
        b"stbl",
        _full_box(b"stsd", 0, 0, struct.pack(">I", 1), sample_entry),
        _full_box(b"stts", 0, 0, struct.pack(">III", 1, count, 1)),
        _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, count, 1)),
        _full_box(b"stsz", 0, 0, struct.pack(">II", 0, count), struct.pack(f">{count}I", *sizes)),
        _full_box(b"stco", 0, 0, struct.pack(">II", 1, chunk_offset)),
    )
    minf = _box(b"minf", vmhd, dinf, stbl)
    return _box(b"moov", mvhd, _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf)))


def mjpeg_mp4(frames: list[bytes], width: int, height: int, fps: int = FPS) -> bytes:
    """An MP4 of ``frames`` (JPEG bytes, all ``width`` × ``height``) at ``fps`` frames per second."""
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isom", b"iso2", b"mp41")
    sizes = [len(f) for f in frames]
    moov_len = len(_moov(sizes, width, height, fps, 0))  # the offset field has a fixed width
    offset = len(ftyp) + moov_len + 8  # mdat header
    mdat = struct.pack(">I", 8 + sum(sizes)) + b"mdat" + b"".join(frames)
    return ftyp + _moov(sizes, width, height, fps, offset) + mdat


def encode_frames(paths: list[Path], fps: int = FPS) -> tuple[bytes, MediaInfo]:
    """The video of an image sequence's frame files, and its media info as the prober reads it."""
    frames, width, height = _jpeg_frames(paths)
    data = mjpeg_mp4(frames, width, height, fps)
    with tempfile.NamedTemporaryFile(suffix=".mp4") as fh:
        fh.write(data)
        fh.flush()
        info = media.probe(Path(fh.name))
    if info is None:
        raise ValueError("the prober did not recognise the sequence video")
    return data, info


__all__ = ["FPS", "encode_frames", "mjpeg_mp4"]
