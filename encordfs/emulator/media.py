"""Media probing for the emulator: what a file is, read from its bytes.

Owns ``probe(path) -> MediaInfo | None`` and ``read_dicom_header(path)``.

Rules
-----
* The **extension decides the type family** (IMAGE, VIDEO, AUDIO, PDF, PLAIN_TEXT, NIFTI, DICOM);
  the **bytes give the fields** (dimensions, duration, fps, audio format, DICOM UIDs). An unknown
  extension returns ``None``: the caller decides what to do (the importer skips it with a warning).
* A file that cannot be parsed is **still returned**: type family from the extension, MIME type from
  the extension, every other field ``None``, and a ``logging`` warning. Fields that one parser could
  not read stay ``None`` while the others are kept (e.g. a WebM whose frame count is unknown).
* ``probe`` never raises for bad content. It raises ``OSError`` only when the file cannot be opened
  or read at all (missing, permission denied, a directory); the importer reports those.
* MIME types: images take the MIME type of the format Pillow detects in the bytes (a PNG named
  ``.jpg`` is ``image/png``); MP4/MOV take it from the ``ftyp`` brand; everything else from the
  extension (see ``_EXTENSIONS``).
* Pure stdlib + Pillow: small hand-written parsers for ISO-BMFF (mp4/mov), EBML (webm/mkv), RIFF
  WAVE (via ``wave``, with a RIFF fallback for float/extensible PCM), FLAC STREAMINFO, MPEG audio
  frame headers (Xing/Info/VBRI frame counts, else a CBR estimate), NIfTI-1/2 headers (plain or
  gzipped) and DICOM Part-10 files (explicit or implicit VR little endian).

Field conventions
-----------------
* VIDEO: ``width``/``height`` are the displayed track size (``tkhd``, falling back to the sample
  entry), ``duration_s`` from ``mvhd`` (else the track), ``fps = frame_count / track duration``,
  ``frame_count`` from ``stts`` (fragmented MP4: summed over the ``moof/traf/trun`` boxes);
  WebM/MKV ``fps`` comes from the track's DefaultDuration, else from counted blocks / duration.
* AUDIO: ``audio_codec`` is an ffmpeg-style codec name (``pcm_s16le``, ``pcm_f32le``, ``flac``,
  ``mp3``); ``audio_bit_depth`` is ``None`` for lossy codecs.
* NIFTI: ``width``/``height`` are ``dim[1]``/``dim[2]``; ``frame_count`` is the number of slices
  ``dim[3]`` (1 for a 2-D image).
* DICOM: one ``.dcm`` file is one slice: ``width`` = Columns (0028,0011), ``height`` = Rows
  (0028,0010), plus Study/Series/SOP Instance UIDs. ``read_dicom_header`` also gives InstanceNumber
  (0020,0013), which the importer uses to order the slices of a series.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import struct
import warnings
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from encordfs.emulator.spec import DataTypeName, MediaInfo

log = logging.getLogger(__name__)

__all__ = ["DicomHeader", "media_kind", "probe", "read_dicom_header"]


class _ParseError(ValueError):
    """The bytes are not what the extension promised (or not something this module can read)."""


# extension (lower case, without dot; "nii.gz" is one extension) -> (type family, default MIME)
_EXTENSIONS: dict[str, tuple[DataTypeName, str]] = {
    "jpg": ("IMAGE", "image/jpeg"),
    "jpeg": ("IMAGE", "image/jpeg"),
    "png": ("IMAGE", "image/png"),
    "webp": ("IMAGE", "image/webp"),
    "bmp": ("IMAGE", "image/bmp"),
    "tif": ("IMAGE", "image/tiff"),
    "tiff": ("IMAGE", "image/tiff"),
    "gif": ("IMAGE", "image/gif"),
    "mp4": ("VIDEO", "video/mp4"),
    "m4v": ("VIDEO", "video/mp4"),
    "mov": ("VIDEO", "video/quicktime"),
    "webm": ("VIDEO", "video/webm"),
    "mkv": ("VIDEO", "video/x-matroska"),
    "wav": ("AUDIO", "audio/wav"),
    "mp3": ("AUDIO", "audio/mpeg"),
    "flac": ("AUDIO", "audio/flac"),
    "pdf": ("PDF", "application/pdf"),
    "txt": ("PLAIN_TEXT", "text/plain"),
    "json": ("PLAIN_TEXT", "application/json"),
    "html": ("PLAIN_TEXT", "text/html"),
    "htm": ("PLAIN_TEXT", "text/html"),
    "xml": ("PLAIN_TEXT", "application/xml"),
    "nii": ("NIFTI", "application/x-nifti"),
    "nii.gz": ("NIFTI", "application/x-nifti"),
    "dcm": ("DICOM", "application/dicom"),
}


def _pillow_can_avif() -> bool:
    try:
        from PIL import features

        return bool(features.check("avif"))
    except Exception:  # noqa: BLE001 - an old Pillow without the feature name
        return False


if _pillow_can_avif():
    _EXTENSIONS["avif"] = ("IMAGE", "image/avif")


def _extension(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return "nii.gz"
    _, dot, ext = name.rpartition(".")
    return ext if dot else ""


def media_kind(path: Path) -> tuple[DataTypeName, str] | None:
    """The (type family, default MIME type) that ``path``'s extension promises, or None if unknown."""
    return _EXTENSIONS.get(_extension(path))


# --------------------------------------------------------------------------------------------- probe


def probe(path: Path) -> MediaInfo | None:
    """Describe ``path`` from its bytes. None for an unknown extension; OSError if unreadable."""
    kind = media_kind(path)
    if kind is None:
        return None
    data_type, mime = kind
    parser = _PARSERS[data_type]
    with open(path, "rb") as fh:  # OSError here is the caller's to report
        fh.read(1)
        fh.seek(0)
        try:
            return parser(fh, path, mime)
        except Exception as exc:  # noqa: BLE001 - any parse failure degrades to "type only"
            log.warning(
                "cannot parse %s as %s (%s: %s); importing it without media fields",
                path,
                data_type,
                type(exc).__name__,
                exc,
            )
            return MediaInfo(data_type=data_type, mime_type=mime)


# ------------------------------------------------------------------------------------------- images


def _probe_image(fh: BinaryIO, path: Path, mime: str) -> MediaInfo:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(fh) as img:
            width, height = img.size
            fmt = img.format
    detected = Image.MIME.get(fmt or "") if fmt else None
    if fmt == "MPO":  # multi-picture JPEG (phone cameras): it is a JPEG to everyone else
        detected = "image/jpeg"
    return MediaInfo(data_type="IMAGE", mime_type=detected or mime, width=width, height=height)


# ------------------------------------------------------------------------------------ ISO-BMFF video

_MAX_MOOV = 64 * 1024 * 1024


def _iter_boxes(buf: bytes, start: int = 0, end: int | None = None):
    """Yield (type, payload_start, payload_end) for the boxes in buf[start:end]."""
    end = len(buf) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, typ = struct.unpack_from(">I4s", buf, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            (size,) = struct.unpack_from(">Q", buf, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise _ParseError(f"box {typ!r} at {pos} overruns its parent")
        yield typ.decode("latin-1"), pos + header, pos + size
        pos += size


def _child(buf: bytes, start: int, end: int, typ: str) -> tuple[int, int] | None:
    for t, s, e in _iter_boxes(buf, start, end):
        if t == typ:
            return s, e
    return None


@dataclass
class _TopLevel:
    ftyp: bytes | None = None
    moov: bytes | None = None  # payload of the moov box
    moofs: list[bytes] | None = None  # payloads of the moof boxes (fragmented MP4), in file order


_MAX_MOOF = 16 * 1024 * 1024
_MAX_FRAGMENTS = 100_000


def _read_top_level_boxes(fh: BinaryIO) -> _TopLevel:
    """ftyp, moov and moof payloads, found by walking the top level of the file with seeks."""
    fh.seek(0, io.SEEK_END)
    file_size = fh.tell()
    pos = 0
    top = _TopLevel(moofs=[])
    assert top.moofs is not None
    while pos + 8 <= file_size:
        fh.seek(pos)
        head = fh.read(16)
        size, typ = struct.unpack_from(">I4s", head, 0)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", head, 8)
            header = 16
        elif size == 0:
            size = file_size - pos
        if size < header or pos + size > file_size:
            if top.moov is None:
                raise _ParseError(f"bad or truncated top-level box {typ!r} at {pos}")
            break  # a truncated tail after the moov: keep what we have
        if typ == b"ftyp" and size <= 4096:
            fh.seek(pos + header)
            top.ftyp = fh.read(size - header)
        elif typ == b"moov":
            if size > _MAX_MOOV:
                raise _ParseError(f"moov box of {size} bytes is too large to read")
            fh.seek(pos + header)
            top.moov = fh.read(size - header)
        elif typ == b"moof" and size <= _MAX_MOOF and len(top.moofs) < _MAX_FRAGMENTS:
            fh.seek(pos + header)
            top.moofs.append(fh.read(size - header))
        pos += size
    return top


def _full_box(buf: bytes, start: int) -> tuple[int, int]:
    """(version, flags) of a full box whose payload starts at ``start``."""
    (word,) = struct.unpack_from(">I", buf, start)
    return word >> 24, word & 0xFFFFFF


def _timescale_duration(buf: bytes, start: int) -> tuple[int, float | None]:
    """(timescale, duration in seconds or None if unknown) of an ``mvhd``/``mdhd`` payload at ``start``."""
    if buf[start] == 1:  # version 1: 64-bit times and duration
        timescale, duration = struct.unpack_from(">IQ", buf, start + 20)
    else:
        timescale, duration = struct.unpack_from(">II", buf, start + 12)
    if timescale and duration not in (0, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF):
        return timescale, duration / timescale
    return timescale, None


def _fragment_totals(top: _TopLevel, track_id: int) -> tuple[int, int]:
    """(sample count, total duration in media timescale units) of a track over all moof fragments."""
    assert top.moov is not None
    default_duration = 0
    mvex = _child(top.moov, 0, len(top.moov), "mvex")
    if mvex is not None:
        for t, s, _ in _iter_boxes(top.moov, *mvex):
            if t == "trex" and struct.unpack_from(">I", top.moov, s + 4)[0] == track_id:
                default_duration = struct.unpack_from(">I", top.moov, s + 12)[0]
    count = total = 0
    for moof in top.moofs or []:
        for t, ts, te in _iter_boxes(moof):
            if t != "traf":
                continue
            tfhd = _child(moof, ts, te, "tfhd")
            if tfhd is None:
                continue
            _, flags = _full_box(moof, tfhd[0])
            if struct.unpack_from(">I", moof, tfhd[0] + 4)[0] != track_id:
                continue
            off = tfhd[0] + 8 + (8 if flags & 0x01 else 0) + (4 if flags & 0x02 else 0)
            traf_duration = struct.unpack_from(">I", moof, off)[0] if flags & 0x08 else default_duration
            for rt, rs, _ in _iter_boxes(moof, ts, te):
                if rt != "trun":
                    continue
                _, rflags = _full_box(moof, rs)
                (n,) = struct.unpack_from(">I", moof, rs + 4)
                count += n
                if rflags & 0x100:
                    pos = rs + 8 + (4 if rflags & 0x01 else 0) + (4 if rflags & 0x04 else 0)
                    stride = 4 * bin(rflags & 0xF00).count("1")
                    total += sum(struct.unpack_from(">I", moof, pos + i * stride)[0] for i in range(n))
                else:
                    total += n * traf_duration
    return count, total


def _probe_isobmff(fh: BinaryIO, path: Path, mime: str) -> MediaInfo:
    top = _read_top_level_boxes(fh)
    if top.ftyp is not None and len(top.ftyp) >= 4:
        if top.ftyp[:4] == b"qt  ":
            mime = "video/quicktime"
        elif path.suffix.lower() != ".mov":
            mime = "video/mp4"
    moov = top.moov
    if moov is None:
        raise _ParseError("no moov box (not an MP4/MOV file, or a truncated one)")

    movie_duration: float | None = None
    mvhd = _child(moov, 0, len(moov), "mvhd")
    if mvhd is not None:
        _, movie_duration = _timescale_duration(moov, mvhd[0])

    for t, ts, te in _iter_boxes(moov):
        if t != "trak":
            continue
        video = _video_track(moov, ts, te)
        if video is None:
            continue
        if not video.frame_count and top.moofs and video.track_id is not None and video.timescale:
            count, units = _fragment_totals(top, video.track_id)
            video.frame_count = count or None
            video.duration = units / video.timescale if units else video.duration
            movie_duration = movie_duration or video.duration
        duration = movie_duration if movie_duration is not None else video.duration
        fps = None
        if video.frame_count and video.duration:
            fps = round(video.frame_count / video.duration, 3)
        return MediaInfo(
            data_type="VIDEO",
            mime_type=mime,
            width=video.width,
            height=video.height,
            duration_s=round(duration, 6) if duration is not None else None,
            fps=fps,
            frame_count=video.frame_count,
        )
    log.warning("%s: no video track found; importing it without dimensions", path)
    return MediaInfo(
        data_type="VIDEO", mime_type=mime, duration_s=round(movie_duration, 6) if movie_duration is not None else None
    )


@dataclass
class _VideoTrack:
    track_id: int | None = None
    width: int | None = None
    height: int | None = None
    timescale: int | None = None
    duration: float | None = None  # seconds, from mdhd
    frame_count: int | None = None


def _video_track(buf: bytes, start: int, end: int) -> _VideoTrack | None:
    """What a trak box says about its video, or None if it is not a video track."""
    mdia = _child(buf, start, end, "mdia")
    if mdia is None:
        return None
    hdlr = _child(buf, *mdia, "hdlr")
    if hdlr is None or buf[hdlr[0] + 8 : hdlr[0] + 12] != b"vide":
        return None

    track = _VideoTrack()
    tkhd = _child(buf, start, end, "tkhd")
    if tkhd is not None:
        s, _ = tkhd
        v1 = buf[s] == 1
        (track.track_id,) = struct.unpack_from(">I", buf, s + (20 if v1 else 12))
        w, h = struct.unpack_from(">II", buf, s + (88 if v1 else 76))
        track.width, track.height = (w >> 16) or None, (h >> 16) or None

    mdhd = _child(buf, *mdia, "mdhd")
    if mdhd is not None:
        timescale, track.duration = _timescale_duration(buf, mdhd[0])
        track.timescale = timescale or None

    minf = _child(buf, *mdia, "minf")
    stbl = _child(buf, *minf, "stbl") if minf else None
    if stbl is not None:
        frame_count = 0
        stts = _child(buf, *stbl, "stts")
        if stts is not None:
            s, _ = stts
            (entries,) = struct.unpack_from(">I", buf, s + 4)
            frame_count = sum(struct.unpack_from(">I", buf, s + 8 + 8 * i)[0] for i in range(entries))
        if not frame_count:
            stsz = _child(buf, *stbl, "stsz")
            if stsz is not None:
                (frame_count,) = struct.unpack_from(">I", buf, stsz[0] + 8)
        track.frame_count = frame_count or None
        if track.width is None or track.height is None:
            stsd = _child(buf, *stbl, "stsd")
            if stsd is not None and stsd[1] - stsd[0] >= 8 + 36:
                # first sample entry: size, type, 6 reserved, dref index, 16 bytes, width, height
                w, h = struct.unpack_from(">HH", buf, stsd[0] + 8 + 32)
                track.width, track.height = track.width or w or None, track.height or h or None
    return track


# ---------------------------------------------------------------------------------------- EBML video

_EBML_MASTERS = {
    0x18538067,  # Segment
    0x1549A966,  # Info
    0x1654AE6B,  # Tracks
    0xAE,  # TrackEntry
    0xE0,  # Video
    0x1F43B675,  # Cluster
    0xA0,  # BlockGroup
}
_EBML_MAX_ELEMENTS = 500_000


def _read_vint(fh: BinaryIO, keep_marker: bool) -> tuple[int, int] | None:
    """(value, length) of one EBML variable-size integer; value -1 for 'unknown size'."""
    first = fh.read(1)
    if not first:
        return None
    b0 = first[0]
    if b0 == 0:
        raise _ParseError("invalid EBML vint")
    length = 1
    mask = 0x80
    while not b0 & mask:
        mask >>= 1
        length += 1
    rest = fh.read(length - 1)
    if len(rest) != length - 1:
        return None
    value = b0 if keep_marker else b0 & (mask - 1)
    all_ones = (b0 & (mask - 1)) == mask - 1 and all(b == 0xFF for b in rest)
    for b in rest:
        value = (value << 8) | b
    if not keep_marker and all_ones:
        return -1, length
    return value, length


def _probe_ebml(fh: BinaryIO, path: Path, mime: str) -> MediaInfo:
    if fh.read(4) != b"\x1a\x45\xdf\xa3":
        raise _ParseError("no EBML header")
    fh.seek(0, io.SEEK_END)
    file_size = fh.tell()
    fh.seek(0)

    timecode_scale = 1_000_000
    duration_ticks: float | None = None
    tracks: list[dict[str, int]] = []
    blocks: dict[int, int] = {}
    scanned_all = True
    seen = 0
    while True:
        seen += 1
        if seen > _EBML_MAX_ELEMENTS:
            scanned_all = False
            break
        elem = _read_vint(fh, keep_marker=True)
        if elem is None:
            break
        size = _read_vint(fh, keep_marker=False)
        if size is None:
            break
        eid, (length, _) = elem[0], size
        if eid in _EBML_MASTERS:
            if eid == 0xAE:
                tracks.append({})
            continue  # descend: children follow directly (works for unknown sizes too)
        if length < 0:
            scanned_all = False
            break  # unknown-size non-master: cannot skip it
        start = fh.tell()
        if start + length > file_size:
            scanned_all = False  # truncated file
            break
        if eid in (0xA3, 0xA1):  # SimpleBlock / Block: track number is the first vint
            track = _read_vint(fh, keep_marker=False)
            if track is not None:
                blocks[track[0]] = blocks.get(track[0], 0) + 1
        elif eid == 0x2AD7B1:  # TimecodeScale
            timecode_scale = int.from_bytes(fh.read(length), "big") or timecode_scale
        elif eid == 0x4489:  # Duration (float)
            raw = fh.read(length)
            duration_ticks = struct.unpack(">f" if length == 4 else ">d", raw)[0] if length in (4, 8) else None
        elif tracks and eid in (0xD7, 0x83, 0xB0, 0xBA, 0x23E383, 0x54B0, 0x54BA):
            # TrackNumber, TrackType, PixelWidth, PixelHeight, DefaultDuration, DisplayWidth/Height
            tracks[-1][hex(eid)] = int.from_bytes(fh.read(length), "big")
        fh.seek(start + length)

    duration = duration_ticks * timecode_scale / 1e9 if duration_ticks else None
    video = next((t for t in tracks if t.get(hex(0x83)) == 1), None)
    if video is None:
        log.warning("%s: no video track found in the Matroska file", path)
        return MediaInfo(data_type="VIDEO", mime_type=mime, duration_s=round(duration, 6) if duration else None)
    width = video.get(hex(0xB0)) or None
    height = video.get(hex(0xBA)) or None
    default_duration = video.get(hex(0x23E383))
    frame_count = blocks.get(video.get(hex(0xD7), 1)) if scanned_all else None
    fps: float | None = None
    if default_duration:
        fps = round(1e9 / default_duration, 3)
    elif frame_count and duration:
        fps = round(frame_count / duration, 3)
    if frame_count is None and fps and duration:
        frame_count = round(fps * duration)
    if width is None or height is None or duration is None:
        log.warning("%s: Matroska file lacks some of width/height/duration", path)
    return MediaInfo(
        data_type="VIDEO",
        mime_type=mime,
        width=width,
        height=height,
        duration_s=round(duration, 6) if duration else None,
        fps=fps,
        frame_count=frame_count,
    )


def _probe_video(fh: BinaryIO, path: Path, mime: str) -> MediaInfo:
    if _extension(path) in ("webm", "mkv"):
        return _probe_ebml(fh, path, mime)
    return _probe_isobmff(fh, path, mime)


# --------------------------------------------------------------------------------------------- audio

_PCM_CODECS = {8: "pcm_u8", 16: "pcm_s16le", 24: "pcm_s24le", 32: "pcm_s32le"}


def _probe_wav(fh: BinaryIO, path: Path, mime: str) -> MediaInfo:
    try:
        with wave.open(fh, "rb") as w:
            rate, frames, width, channels = w.getframerate(), w.getnframes(), w.getsampwidth(), w.getnchannels()
    except wave.Error:
        fh.seek(0)
        return _probe_riff_wave(fh, mime)
    bits = width * 8
    return MediaInfo(
        data_type="AUDIO",
        mime_type=mime,
        duration_s=round(frames / rate, 6) if rate else None,
        audio_sample_rate=rate,
        audio_bit_depth=bits,
        audio_codec=_PCM_CODECS.get(bits),
        audio_num_channels=channels,
    )


def _probe_riff_wave(fh: BinaryIO, mime: str) -> MediaInfo:
    """RIFF/WAVE parser for what stdlib ``wave`` rejects (IEEE float, extensible, a-law...)."""
    head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise _ParseError("not a RIFF/WAVE file")
    fmt: tuple[int, int, int, int, int] | None = None
    data_size: int | None = None
    while True:
        ch = fh.read(8)
        if len(ch) < 8:
            break
        cid, size = ch[:4], struct.unpack("<I", ch[4:])[0]
        if cid == b"fmt ":
            body = fh.read(size)
            tag, channels, rate, byte_rate, _align, bits = struct.unpack_from("<HHIIHH", body)
            if tag == 0xFFFE and len(body) >= 26:
                tag = struct.unpack_from("<H", body, 24)[0]  # SubFormat GUID starts with the tag
            fmt = (tag, channels, rate, byte_rate, bits)
            if size % 2:
                fh.read(1)
        elif cid == b"data":
            data_size = size
            break
        else:
            fh.seek(size + (size % 2), io.SEEK_CUR)
    if fmt is None:
        raise _ParseError("no fmt chunk")
    tag, channels, rate, byte_rate, bits = fmt
    codec = {1: _PCM_CODECS.get(bits), 3: f"pcm_f{bits}le", 6: "pcm_alaw", 7: "pcm_mulaw"}.get(tag)
    duration = round(data_size / byte_rate, 6) if data_size is not None and byte_rate else None
    return MediaInfo(
        data_type="AUDIO",
        mime_type=mime,
        duration_s=duration,
        audio_sample_rate=rate,
        audio_bit_depth=bits or None,
        audio_codec=codec,
        audio_num_channels=channels,
    )


def _skip_id3v2(fh: BinaryIO) -> int:
    """Seek past a leading ID3v2 tag; return the offset of what follows."""
    head = fh.read(10)
    if len(head) == 10 and head[:3] == b"ID3":
        size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
        offset = 10 + size + (10 if head[5] & 0x10 else 0)
    else:
        offset = 0
    fh.seek(offset)
    return offset


def _probe_flac(fh: BinaryIO, path: Path, mime: str) -> MediaInfo:
    _skip_id3v2(fh)
    if fh.read(4) != b"fLaC":
        raise _ParseError("no fLaC signature")
    block = fh.read(4 + 34)
    if len(block) < 38 or block[0] & 0x7F != 0:
        raise _ParseError("first metadata block is not STREAMINFO")
    info = block[4:]
    packed = int.from_bytes(info[10:18], "big")
    rate = packed >> 44
    channels = ((packed >> 41) & 0x7) + 1
    bits = ((packed >> 36) & 0x1F) + 1
    total = packed & 0xFFFFFFFFF
    return MediaInfo(
        data_type="AUDIO",
        mime_type=mime,
        duration_s=round(total / rate, 6) if rate and total else None,
        audio_sample_rate=rate or None,
        audio_bit_depth=bits,
        audio_codec="flac",
        audio_num_channels=channels,
    )


_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MP3_BITRATES = {
    (3, 3): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (3, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (3, 1): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 3): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (2, 1): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


def _probe_mp3(fh: BinaryIO, path: Path, mime: str) -> MediaInfo:
    start = _skip_id3v2(fh)
    window = fh.read(64 * 1024)
    fh.seek(0, io.SEEK_END)
    file_size = fh.tell()
    for i in range(len(window) - 4):
        if window[i] != 0xFF or window[i + 1] & 0xE0 != 0xE0:
            continue
        h = int.from_bytes(window[i : i + 4], "big")
        version = (h >> 19) & 3  # 0: MPEG 2.5, 2: MPEG 2, 3: MPEG 1
        layer = (h >> 17) & 3  # 1: III, 2: II, 3: I
        br_index = (h >> 12) & 0xF
        sr_index = (h >> 10) & 3
        if version == 1 or layer == 0 or br_index in (0, 15) or sr_index == 3:
            continue
        rate = _MP3_RATES[version][sr_index]
        bitrate = _MP3_BITRATES[(3 if version == 3 else 2, layer)][br_index] * 1000
        mono = ((h >> 6) & 3) == 3
        spf = 384 if layer == 3 else (1152 if layer == 2 or version == 3 else 576)
        side = (17 if mono else 32) if version == 3 else (9 if mono else 17)
        frames: int | None = None
        xing = window[i + 4 + side : i + 4 + side + 12]
        vbri = window[i + 36 : i + 36 + 18]
        if xing[:4] in (b"Xing", b"Info") and int.from_bytes(xing[4:8], "big") & 1:
            frames = int.from_bytes(xing[8:12], "big")
        elif vbri[:4] == b"VBRI":
            frames = int.from_bytes(vbri[14:18], "big")
        if frames:
            duration: float | None = frames * spf / rate
        else:
            fh.seek(max(file_size - 128, 0))
            tail = 128 if fh.read(3) == b"TAG" else 0
            audio_bytes = file_size - start - i - tail
            duration = audio_bytes * 8 / bitrate if bitrate else None
        return MediaInfo(
            data_type="AUDIO",
            mime_type=mime,
            duration_s=round(duration, 6) if duration else None,
            audio_sample_rate=rate,
            audio_codec={1: "mp3", 2: "mp2", 3: "mp1"}[layer],
            audio_num_channels=1 if mono else 2,
        )
    raise _ParseError("no MPEG audio frame header in the first 64 KiB")


def _probe_audio(fh: BinaryIO, path: Path, mime: str) -> MediaInfo:
    ext = _extension(path)
    if ext == "wav":
        return _probe_wav(fh, path, mime)
    if ext == "flac":
        return _probe_flac(fh, path, mime)
    return _probe_mp3(fh, path, mime)


# ------------------------------------------------------------------------------------ documents/text

_TEXT_CHECK_BYTES = 64 * 1024
_JSON_VALIDATE_MAX = 8 * 1024 * 1024


def _probe_pdf(fh: BinaryIO, path: Path, mime: str) -> MediaInfo:
    if b"%PDF-" not in fh.read(1024):
        raise _ParseError("no %PDF- header")
    return MediaInfo(data_type="PDF", mime_type=mime)


def _probe_text(fh: BinaryIO, path: Path, mime: str) -> MediaInfo:
    head = fh.read(_TEXT_CHECK_BYTES)
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _ParseError("binary content (NUL bytes) in a text file")
    if mime == "application/json":
        fh.seek(0, io.SEEK_END)
        if fh.tell() <= _JSON_VALIDATE_MAX:
            fh.seek(0)
            json.loads(fh.read())
    return MediaInfo(data_type="PLAIN_TEXT", mime_type=mime)


# --------------------------------------------------------------------------------------------- NIfTI


def _probe_nifti(fh: BinaryIO, path: Path, mime: str) -> MediaInfo:
    if _extension(path) == "nii.gz" or fh.read(2) == b"\x1f\x8b":
        fh.seek(0)
        with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
            header = gz.read(540)
    else:
        fh.seek(0)
        header = fh.read(540)
    if len(header) < 348:
        raise _ParseError("shorter than a NIfTI-1 header")
    dims: tuple[int, ...]
    for endian in ("<", ">"):
        (sizeof_hdr,) = struct.unpack_from(endian + "i", header, 0)
        if sizeof_hdr == 348 and header[344:347] in (b"n+1", b"ni1"):
            dims = struct.unpack_from(endian + "8h", header, 40)
            break
        if sizeof_hdr == 540 and len(header) >= 540 and header[4:7] in (b"n+2", b"ni2"):
            dims = struct.unpack_from(endian + "8q", header, 16)
            break
    else:
        raise _ParseError("no NIfTI-1/NIfTI-2 header (sizeof_hdr/magic)")
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise _ParseError(f"bad dim[0] {ndim}")
    width = int(dims[1]) if ndim >= 1 else None
    height = int(dims[2]) if ndim >= 2 else None
    slices = int(dims[3]) if ndim >= 3 else 1
    return MediaInfo(data_type="NIFTI", mime_type=mime, width=width, height=height, frame_count=slices)


# --------------------------------------------------------------------------------------------- DICOM


@dataclass(frozen=True)
class DicomHeader:
    """The few tags of a DICOM slice that the emulator needs."""

    rows: int | None = None
    columns: int | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    instance_number: int | None = None


_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_UNSUPPORTED_SYNTAXES = {
    "1.2.840.10008.1.2.2": "explicit VR big endian",
    "1.2.840.10008.1.2.1.99": "deflated explicit VR little endian",
}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_WANTED = {
    (0x0008, 0x0018): "sop_instance_uid",
    (0x0020, 0x000D): "study_uid",
    (0x0020, 0x000E): "series_uid",
    (0x0020, 0x0013): "instance_number",
    (0x0028, 0x0010): "rows",
    (0x0028, 0x0011): "columns",
}
_LAST_WANTED = (0x0028, 0x0011)
_UNDEFINED = 0xFFFFFFFF


class _DicomReader:
    def __init__(self, fh: BinaryIO, explicit: bool) -> None:
        self.fh = fh
        self.explicit = explicit

    def _exact(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise EOFError("truncated DICOM element")
        return data

    def element_header(self) -> tuple[tuple[int, int], bytes | None, int] | None:
        """(tag, VR or None, length) of the next element, or None at end of file."""
        head = self.fh.read(8)
        if not head:
            return None
        if len(head) < 8:
            raise EOFError("truncated DICOM element header")
        group, elem = struct.unpack_from("<HH", head)
        if group == 0xFFFE:  # item / delimiters never carry a VR
            return (group, elem), None, struct.unpack_from("<I", head, 4)[0]
        if not self.explicit:
            return (group, elem), None, struct.unpack_from("<I", head, 4)[0]
        vr = head[4:6]
        if vr in _LONG_VRS:
            return (group, elem), vr, struct.unpack("<I", self._exact(4))[0]
        return (group, elem), vr, struct.unpack_from("<H", head, 6)[0]

    def skip_undefined(self) -> None:
        """Skip a sequence (or encapsulated pixel data) of undefined length, items and all."""
        while True:
            header = self.element_header()
            if header is None:
                raise EOFError("unterminated DICOM sequence")
            tag, _, length = header
            if tag == (0xFFFE, 0xE0DD):  # sequence delimiter
                return
            if tag == (0xFFFE, 0xE000):  # item
                if length == _UNDEFINED:
                    self.skip_item()
                else:
                    self.fh.seek(length, io.SEEK_CUR)
            else:
                raise _ParseError(f"unexpected tag {tag} in a sequence")

    def skip_item(self) -> None:
        while True:
            header = self.element_header()
            if header is None:
                raise EOFError("unterminated DICOM item")
            tag, _, length = header
            if tag == (0xFFFE, 0xE00D):  # item delimiter
                return
            if length == _UNDEFINED:
                self.skip_undefined()
            else:
                self.fh.seek(length, io.SEEK_CUR)


def _decode_text(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").strip("\x00 ")


def _read_dicom(fh: BinaryIO) -> DicomHeader:
    preamble = fh.read(132)
    if len(preamble) < 132 or preamble[128:132] != b"DICM":
        raise _ParseError("no DICM magic at offset 128 (not a DICOM Part-10 file)")
    meta = _DicomReader(fh, explicit=True)
    syntax: str | None = None
    while True:
        pos = fh.tell()
        header = meta.element_header()
        if header is None:
            raise _ParseError("no data set after the file meta group")
        tag, _, length = header
        if tag[0] != 0x0002:
            fh.seek(pos)
            break
        if length == _UNDEFINED:
            raise _ParseError("undefined length in the file meta group")
        value = meta._exact(length)
        if tag == (0x0002, 0x0010):
            syntax = _decode_text(value)
    if syntax in _UNSUPPORTED_SYNTAXES:
        raise _ParseError(f"transfer syntax {_UNSUPPORTED_SYNTAXES[syntax]} is not supported")
    reader = _DicomReader(fh, explicit=syntax != _IMPLICIT_LE)
    found: dict[str, object] = {}
    while True:
        header = reader.element_header()
        if header is None:
            break
        tag, vr, length = header
        if tag > _LAST_WANTED:
            break
        if length == _UNDEFINED:
            reader.skip_undefined()
            continue
        if tag not in _WANTED:
            fh.seek(length, io.SEEK_CUR)
            continue
        value = reader._exact(length)
        name = _WANTED[tag]
        if name in ("rows", "columns"):
            if len(value) >= 2:
                found[name] = struct.unpack_from("<H", value)[0]
        elif name == "instance_number":
            text = _decode_text(value)
            try:
                found[name] = int(text)
            except ValueError:
                log.warning("DICOM InstanceNumber %r is not an integer", text)
        else:
            found[name] = _decode_text(value) or None
    return DicomHeader(**found)  # type: ignore[arg-type]


def read_dicom_header(path: Path) -> DicomHeader | None:
    """Rows, Columns, UIDs and InstanceNumber of a DICOM Part-10 file; None (and a warning) if unreadable."""
    try:
        with open(path, "rb") as fh:
            return _read_dicom(fh)
    except Exception as exc:  # noqa: BLE001
        log.warning("cannot read the DICOM header of %s (%s: %s)", path, type(exc).__name__, exc)
        return None


def _probe_dicom(fh: BinaryIO, path: Path, mime: str) -> MediaInfo:
    h = _read_dicom(fh)
    return MediaInfo(
        data_type="DICOM",
        mime_type=mime,
        width=h.columns,
        height=h.rows,
        dicom_study_uid=h.study_uid,
        dicom_series_uid=h.series_uid,
        dicom_instance_uid=h.sop_instance_uid,
    )


_PARSERS: dict[str, Callable[[BinaryIO, Path, str], MediaInfo]] = {
    "IMAGE": _probe_image,
    "VIDEO": _probe_video,
    "AUDIO": _probe_audio,
    "PDF": _probe_pdf,
    "PLAIN_TEXT": _probe_text,
    "NIFTI": _probe_nifti,
    "DICOM": _probe_dicom,
}
