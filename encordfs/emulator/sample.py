"""The emulator's ``--sample`` workspace: real media written to disk, described as ``DatasetSpec``.

Owns ``generate(dest) -> list[DatasetSpec]`` and the small writers it needs (DICOM Part-10,
NIfTI-1, PDF, WAV), which tests may reuse.

Rules
-----
* **Deterministic**: the same bytes on every run and machine with the same Pillow/zlib. Every random
  choice comes from ``numpy.random.default_rng`` / ``random.Random`` seeded with ``SEED``; no
  timestamps are written (gzip ``mtime=0``, fixed DICOM dates, no PDF dates).
* **Real media**: every file is a valid file of its type (images via Pillow, DICOM/NIfTI/PDF/WAV
  written by hand to their specs, the MP4/WebM/FLAC/MP3 copied from ``assets/``, made once with
  ffmpeg; ffmpeg is not a runtime dependency). Each row's ``MediaInfo`` comes from ``media.probe``,
  so the sample also exercises the prober.
* **On-disk layout** mirrors ``importer.scan``'s: ``dest/<dataset>/<file>`` and
  ``dest/<dataset>/<group>/<member>`` (with an ``.image-sequence`` marker in sequence folders) and
  client metadata also written as ``NAME.metadata.json`` sidecars, so ``scan(dest)`` finds the same
  datasets, rows, groups and metadata (only the titles differ). Names on disk are plain ASCII; the **titles**
  in the returned specs are free strings and deliberately include hostile ones (duplicates, case-only
  duplicates, ``/``, unicode, emoji, a 300-byte title, leading/trailing spaces, ``.``, ``..``,
  ``.hidden.png``, a JPEG titled without extension next to one titled with it).
* Datasets come back sorted by title: ``media-misc``, ``medical``, ``street-scenes``.
* Budget: about 130 images plus the other media, under ~20 MB and a few seconds to generate.
* ``generate`` creates ``dest`` if needed and overwrites its own files; it deletes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import random
import shutil
import struct
import wave
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from encordfs.emulator import media
from encordfs.emulator.spec import DatasetSpec, FileSpec, GroupSpec

__all__ = [
    "SEED",
    "generate",
    "write_dicom_slice",
    "write_nifti",
    "write_pdf",
    "write_wav",
]

SEED = 20240611

_SIZES_SMALL = [(64, 48), (96, 96), (160, 120), (200, 150), (256, 256), (320, 240)]
_SIZES_MEDIUM = [(480, 360), (640, 480), (800, 600)]
_SIZES_LARGE = [(1024, 768), (1280, 720), (1920, 1080)]
_FORMATS = ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"]
GroupKind = Literal["image_group", "image_sequence", "dicom_series"]
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff", "GIF": "gif"}


# ---------------------------------------------------------------------------------------- images


def _scene(rng: np.random.Generator, width: int, height: int, *, t: float = 0.0, noise: float = 8.0) -> Image.Image:
    """A street-ish scene: sky gradient, ground, buildings, a sun, cars, then sensor noise."""
    sky_top = rng.integers(40, 140, size=3)
    sky_bottom = rng.integers(150, 255, size=3)
    horizon = int(height * rng.uniform(0.45, 0.7))
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    arr = sky_top[None, None, :] * (1 - ramp) + sky_bottom[None, None, :] * ramp
    arr = np.broadcast_to(arr, (height, width, 3)).copy()
    ground = rng.integers(30, 110, size=3)
    gramp = np.linspace(0.7, 1.15, max(height - horizon, 1))[:, None, None]
    arr[horizon:] = np.clip(ground[None, None, :] * gramp, 0, 255)
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    # sun
    r = max(2, int(min(width, height) * rng.uniform(0.04, 0.09)))
    cx = int(width * (rng.uniform(0.1, 0.9) + 0.02 * t)) % max(width, 1)
    cy = int(horizon * rng.uniform(0.15, 0.5))
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 236, int(rng.integers(120, 200))))
    # buildings
    x = int(-rng.integers(0, max(width // 10, 1)))
    while x < width:
        bw = int(width * rng.uniform(0.05, 0.16)) + 2
        bh = int(horizon * rng.uniform(0.2, 0.85))
        shade = tuple(int(v) for v in rng.integers(50, 200, size=3))
        draw.rectangle((x, horizon - bh, x + bw, horizon), fill=shade)
        step = max(4, bw // 5)
        for wy in range(horizon - bh + step // 2, horizon - step, step * 2):
            for wx in range(x + step // 2, x + bw - step // 2, step * 2):
                if rng.random() < 0.55:
                    lit = (250, 230, 140) if rng.random() < 0.5 else (40, 50, 70)
                    draw.rectangle((wx, wy, wx + step // 2, wy + step // 2), fill=lit)
        x += bw + int(rng.integers(0, max(width // 30, 2)))
    # road and cars
    road_y = horizon + (height - horizon) // 3
    draw.rectangle((0, road_y, width, road_y + max(3, (height - horizon) // 3)), fill=(60, 60, 64))
    for _ in range(int(rng.integers(1, 5))):
        cw = int(width * rng.uniform(0.06, 0.14)) + 3
        ch = max(2, cw // 2)
        cx = int((rng.uniform(0, 1) * width + t * width * 0.08) % width)
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.rounded_rectangle((cx, road_y - ch // 3, cx + cw, road_y + ch), radius=max(1, ch // 4), fill=color)
    out = np.asarray(img, dtype=np.int16)
    if noise > 0:
        out = out + rng.normal(0, noise, size=out.shape).astype(np.int16)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def _save_image(img: Image.Image, path: Path, fmt: str, quality: int = 85) -> None:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality, optimize=True)
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=quality, method=4)
    elif fmt == "PNG":
        img.save(buf, "PNG", optimize=False, compress_level=6)
    elif fmt == "TIFF":
        img.save(buf, "TIFF", compression="tiff_deflate")
    elif fmt == "GIF":
        img.quantize(colors=128, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(buf, "GIF")
    elif fmt == "BMP":
        img.save(buf, "BMP")
    else:  # pragma: no cover - programming error
        raise ValueError(fmt)
    path.write_bytes(buf.getvalue())


def _write_animated_gif(rng: np.random.Generator, path: Path, size: tuple[int, int], frames: int) -> None:
    imgs = [
        _scene(np.random.default_rng(int(rng.integers(1 << 31))), *size, t=i, noise=0).quantize(
            colors=64, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
        )
        for i in range(frames)
    ]
    buf = io.BytesIO()
    imgs[0].save(buf, "GIF", save_all=True, append_images=imgs[1:], duration=120, loop=0)
    path.write_bytes(buf.getvalue())


# ----------------------------------------------------------------------------------------- DICOM

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_IMPL_CLASS_UID = "2.25.1337001"
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def make_uid(*parts: object) -> str:
    """A deterministic ``2.25.<decimal>`` UID (UUID-derived form) from ``parts``."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:15]
    return "2.25." + str(int.from_bytes(digest, "big"))


def _dicom_element(group: int, elem: int, vr: str, value: bytes | str | int | list[int]) -> bytes:
    if isinstance(value, str):
        raw = value.encode("ascii")
        pad = b"\x00" if vr in ("UI", "OB") else b" "
    elif isinstance(value, int):
        raw, pad = struct.pack("<H" if vr == "US" else "<I", value), b"\x00"
    elif isinstance(value, list):
        raw, pad = struct.pack(f"<{len(value)}H", *value), b"\x00"
    else:
        raw, pad = value, b"\x00"
    if len(raw) % 2:
        raw += pad
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", group, elem, vr.encode(), len(raw)) + raw
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(raw)) + raw


def write_dicom_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    study_uid: str,
    series_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    modality: str = "CT",
    patient_name: str = "PHANTOM^ALICE",
    patient_id: str = "EMU-0001",
    series_description: str = "",
    slice_location: float = 0.0,
    pixel_spacing: float = 1.0,
    slice_thickness: float = 2.5,
) -> None:
    """Write one single-frame DICOM Part-10 file (explicit VR little endian, signed 16-bit)."""
    if pixels.ndim != 2:
        raise ValueError("pixels must be 2-D")
    rows, cols = pixels.shape
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    meta_body = b"".join(
        [
            _dicom_element(0x0002, 0x0001, "OB", b"\x00\x01"),
            _dicom_element(0x0002, 0x0002, "UI", sop_class),
            _dicom_element(0x0002, 0x0003, "UI", sop_instance_uid),
            _dicom_element(0x0002, 0x0010, "UI", _EXPLICIT_VR_LE),
            _dicom_element(0x0002, 0x0012, "UI", _IMPL_CLASS_UID),
            _dicom_element(0x0002, 0x0013, "SH", "ENCORDFS_EMU"),
        ]
    )
    meta = _dicom_element(0x0002, 0x0000, "UL", len(meta_body)) + meta_body
    ds = b"".join(
        [
            _dicom_element(0x0008, 0x0005, "CS", "ISO_IR 100"),
            _dicom_element(0x0008, 0x0008, "CS", "ORIGINAL\\PRIMARY\\AXIAL"),
            _dicom_element(0x0008, 0x0016, "UI", sop_class),
            _dicom_element(0x0008, 0x0018, "UI", sop_instance_uid),
            _dicom_element(0x0008, 0x0020, "DA", "20240115"),
            _dicom_element(0x0008, 0x0030, "TM", "093000"),
            _dicom_element(0x0008, 0x0060, "CS", modality),
            _dicom_element(0x0008, 0x0070, "LO", "Encordfs Emulator Phantoms"),
            _dicom_element(0x0008, 0x103E, "LO", series_description),
            _dicom_element(0x0010, 0x0010, "PN", patient_name),
            _dicom_element(0x0010, 0x0020, "LO", patient_id),
            _dicom_element(0x0010, 0x0040, "CS", "O"),
            _dicom_element(0x0018, 0x0050, "DS", f"{slice_thickness:g}"),
            _dicom_element(0x0020, 0x000D, "UI", study_uid),
            _dicom_element(0x0020, 0x000E, "UI", series_uid),
            _dicom_element(0x0020, 0x0010, "SH", "1"),
            _dicom_element(0x0020, 0x0011, "IS", "1"),
            _dicom_element(0x0020, 0x0013, "IS", str(instance_number)),
            _dicom_element(
                0x0020,
                0x0032,
                "DS",
                f"-{cols * pixel_spacing / 2:g}\\-{rows * pixel_spacing / 2:g}\\{slice_location:g}",
            ),
            _dicom_element(0x0020, 0x0037, "DS", "1\\0\\0\\0\\1\\0"),
            _dicom_element(0x0020, 0x0052, "UI", make_uid("frame-of-reference", study_uid)),
            _dicom_element(0x0020, 0x1041, "DS", f"{slice_location:g}"),
            _dicom_element(0x0028, 0x0002, "US", 1),
            _dicom_element(0x0028, 0x0004, "CS", "MONOCHROME2"),
            _dicom_element(0x0028, 0x0010, "US", rows),
            _dicom_element(0x0028, 0x0011, "US", cols),
            _dicom_element(0x0028, 0x0030, "DS", f"{pixel_spacing:g}\\{pixel_spacing:g}"),
            _dicom_element(0x0028, 0x0100, "US", 16),
            _dicom_element(0x0028, 0x0101, "US", 16),
            _dicom_element(0x0028, 0x0102, "US", 15),
            _dicom_element(0x0028, 0x0103, "US", 1),
            _dicom_element(0x0028, 0x1050, "DS", "40" if modality == "CT" else "600"),
            _dicom_element(0x0028, 0x1051, "DS", "400" if modality == "CT" else "1200"),
            _dicom_element(0x0028, 0x1052, "DS", "0"),
            _dicom_element(0x0028, 0x1053, "DS", "1"),
            _dicom_element(0x7FE0, 0x0010, "OW", pixels.astype("<i2").tobytes()),
        ]
    )
    path.write_bytes(b"\x00" * 128 + b"DICM" + meta + ds)


def _phantom_volume(rng: np.random.Generator, size: int, slices: int, modality: str) -> np.ndarray:
    """A head/torso-like phantom: nested ellipses whose radii vary with z, plus noise."""
    yy, xx = np.mgrid[-1 : 1 : complex(size), -1 : 1 : complex(size)]
    vol = np.empty((slices, size, size), dtype=np.int16)
    for z in range(slices):
        f = 1.0 - 0.6 * ((z - (slices - 1) / 2) / max(slices, 1)) ** 2 * 4
        f = max(f, 0.35)
        if modality == "CT":
            img = np.full((size, size), -1000.0)
            img[(xx / (0.85 * f)) ** 2 + (yy / (0.7 * f)) ** 2 <= 1] = 900.0  # bone shell
            img[(xx / (0.78 * f)) ** 2 + (yy / (0.63 * f)) ** 2 <= 1] = 40.0  # soft tissue
            img[((xx + 0.3) / (0.2 * f)) ** 2 + (yy / (0.35 * f)) ** 2 <= 1] = -800.0  # lung
            img[((xx - 0.3) / (0.2 * f)) ** 2 + (yy / (0.35 * f)) ** 2 <= 1] = -800.0
            img[((xx - 0.05) / 0.08) ** 2 + ((yy - 0.1 + 0.01 * z) / 0.08) ** 2 <= 1] = 200.0  # lesion
            img += rng.normal(0, 12, size=img.shape)
        else:
            img = np.zeros((size, size))
            img[(xx / (0.8 * f)) ** 2 + (yy / (0.9 * f)) ** 2 <= 1] = 400.0
            img[(xx / (0.72 * f)) ** 2 + (yy / (0.82 * f)) ** 2 <= 1] = 900.0
            img[(xx / (0.2 * f)) ** 2 + ((yy + 0.1) / (0.12 * f)) ** 2 <= 1] = 1500.0  # ventricles
            img += np.abs(rng.normal(0, 20, size=img.shape))
        vol[z] = np.clip(img, -1024, 3071).astype(np.int16)
    return vol


# ----------------------------------------------------------------------------------------- NIfTI


def write_nifti(
    path: Path,
    volume: np.ndarray,
    *,
    voxel_mm: tuple[float, float, float] = (1.0, 1.0, 2.5),
    description: str = "encordfs emulator phantom",
) -> None:
    """Write a single-file NIfTI-1 (``.nii``, or gzipped when ``path`` ends with ``.gz``).

    ``volume`` is indexed [x, y, z] and stored as little-endian int16 in Fortran (x-fastest) order.
    """
    if volume.ndim != 3:
        raise ValueError("volume must be 3-D")
    nx, ny, nz = volume.shape
    dx, dy, dz = voxel_mm
    header = struct.pack(
        "<i10s18sihcc8hfffhhhh8ffffhccffffii80s24shh6f4f4f4f16s4s",
        348,
        b"",
        b"",
        0,
        0,
        b"r",
        b"\x00",
        3,
        nx,
        ny,
        nz,
        1,
        1,
        1,
        1,
        0.0,
        0.0,
        0.0,
        0,
        4,
        16,
        0,  # datatype INT16, bitpix, slice_start
        1.0,
        dx,
        dy,
        dz,
        0.0,
        0.0,
        0.0,
        0.0,  # pixdim (qfac first)
        352.0,
        1.0,
        0.0,  # vox_offset, scl_slope, scl_inter
        nz - 1,
        b"\x00",
        bytes([2 | 8]),  # slice_end, slice_code, xyzt_units (mm, s)
        float(volume.max()),
        float(volume.min()),
        0.0,
        0.0,
        0,
        0,
        description.encode("ascii")[:79],
        b"",
        1,
        1,  # qform_code, sform_code (scanner)
        0.0,
        0.0,
        0.0,
        -nx * dx / 2,
        -ny * dy / 2,
        -nz * dz / 2,
        dx,
        0.0,
        0.0,
        -nx * dx / 2,
        0.0,
        dy,
        0.0,
        -ny * dy / 2,
        0.0,
        0.0,
        dz,
        -nz * dz / 2,
        b"",
        b"n+1\x00",
    )
    assert len(header) == 348
    data = header + b"\x00\x00\x00\x00" + np.asarray(volume, dtype="<i2").tobytes(order="F")
    if path.name.endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)


# ------------------------------------------------------------------------------------- PDF / WAV


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def write_pdf(path: Path, title: str, lines: list[str]) -> None:
    """Write a minimal valid one-page PDF 1.4 (Helvetica text, correct xref offsets)."""
    content_lines = ["BT", "/F2 16 Tf", "72 760 Td", f"({_pdf_escape(title)}) Tj", "/F1 11 Tf", "0 -28 Td"]
    for line in lines:
        content_lines += [f"({_pdf_escape(line)}) Tj", "0 -15 Td"]
    content_lines += ["ET", "0.6 w", "72 745 m 540 745 l S"]
    stream = "\n".join(content_lines).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R /F2 5 0 R >> >> /Contents 6 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Title (" + _pdf_escape(title).encode("latin-1") + b") /Producer (encordfs emulator) >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        len(objects),
        xref,
    )
    path.write_bytes(bytes(out))


def write_wav(
    path: Path, *, seconds: float, rate: int = 16000, channels: int = 1, freqs: tuple[float, ...] = (440.0,)
) -> None:
    """Write a 16-bit PCM WAV: a sum of tones with a gentle fade in/out (stereo pans the tones)."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    env = np.minimum(1.0, np.minimum(t, seconds - t) / 0.05)
    chans = []
    for c in range(channels):
        sig = sum(math.pow(0.6, i) * np.sin(2 * np.pi * f * (1 + 0.003 * c) * t) for i, f in enumerate(freqs))
        chans.append(0.5 * env * sig / max(1.0, float(np.max(np.abs(sig)))))
    pcm = (np.stack(chans, axis=1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


# ------------------------------------------------------------------------------------- metadata

_LABELS = ["car", "pedestrian", "cyclist", "bus", "traffic_light", "sign", "dog", "truck", "scooter"]
_CAMERAS = [
    {"id": "cam-01", "model": "Sony IMX490", "mount": "roof-front"},
    {"id": "cam-02", "model": "FLIR Blackfly S", "mount": "pole"},
    {"id": "cam-03", "model": "GoPro HERO11", "mount": "dashboard"},
]
_CITIES = [("London", 51.5072, -0.1276), ("Zürich", 47.3769, 8.5417), ("東京", 35.6762, 139.6503)]
_ANNOTATORS = ["alice@example.com", "bob@example.com", "chloé@example.org", None]


def _street_metadata(rnd: random.Random, index: int) -> dict[str, Any]:
    city, lat, lon = rnd.choice(_CITIES)
    labels = sorted(rnd.sample(_LABELS, rnd.randint(0, 4)))
    meta: dict[str, Any] = {
        "split": rnd.choices(["train", "val", "test"], weights=[7, 2, 1])[0],
        "labels": labels,
        "camera": dict(rnd.choice(_CAMERAS)),
        "location": {
            "city": city,
            "lat": round(lat + rnd.uniform(-0.05, 0.05), 5),
            "lon": round(lon + rnd.uniform(-0.05, 0.05), 5),
        },
        "captured_at": f"2024-0{rnd.randint(1, 9)}-{rnd.randint(10, 28)}T{rnd.randint(10, 23)}:"
        f"{rnd.randint(10, 59)}:{rnd.randint(10, 59)}Z",
        "annotator": rnd.choice(_ANNOTATORS),
        "scores": {
            "quality": round(rnd.uniform(0.3, 1.0), 3),
            "blur": round(rnd.uniform(0, 0.6), 3),
            "occlusion": round(rnd.uniform(0, 1), 3),
        },
        "reviewed": rnd.random() < 0.6,
        "frame_index": index,
    }
    if rnd.random() < 0.3:
        meta["weather"] = rnd.choice(["rain", "fog", "clear", "snow"])
    if rnd.random() < 0.2:
        meta["notes"] = rnd.choice(
            ["glare from the sun", "lens partially covered", "night shot", "duplicate of an earlier frame?"]
        )
    return meta


# ------------------------------------------------------------------------------------- generation


@dataclass
class _Writer:
    """Writes files under ``root`` and turns them into FileSpecs via ``media.probe``."""

    root: Path

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def spec(self, title: str, path: Path, metadata: dict[str, Any] | None = None) -> FileSpec:
        info = media.probe(path)
        if info is None:  # pragma: no cover - every extension used here is known
            raise AssertionError(f"sample wrote an unprobeable file: {path}")
        self.sidecar(path, metadata)
        return FileSpec(title=title, path=path, media=info, client_metadata=metadata)

    def sidecar(self, path: Path, metadata: dict[str, Any] | None) -> None:
        """Write ``NAME.metadata.json`` beside ``path`` so that ``importer.scan(dest)`` sees it too."""
        if metadata is not None:
            text = json.dumps(metadata, ensure_ascii=False, indent=2) + "\n"
            path.with_name(path.name + ".metadata.json").write_text(text, encoding="utf-8")

    def group(
        self,
        title: str,
        kind: GroupKind,
        folder: Path,
        children: list[FileSpec],
        metadata: dict[str, Any] | None = None,
    ) -> GroupSpec:
        self.sidecar(folder, metadata)
        return GroupSpec(title=title, kind=kind, children=children, client_metadata=metadata)


def _copy_asset(name: str, dest: Path) -> None:
    with resources.as_file(resources.files("encordfs.emulator").joinpath("assets", name)) as src:
        shutil.copyfile(src, dest)


def _street_scenes(w: _Writer, rng: np.random.Generator, rnd: random.Random) -> DatasetSpec:
    ds = "street-scenes"
    rows: list[FileSpec | GroupSpec] = []
    for i in range(84):
        fmt = _FORMATS[i % len(_FORMATS)]
        bucket = i % 7
        if bucket < 4:
            size = _SIZES_SMALL[(i // 7 + bucket) % len(_SIZES_SMALL)]
        elif bucket < 6:
            size = _SIZES_MEDIUM[(i // 7 + bucket) % len(_SIZES_MEDIUM)]
        elif fmt in ("JPEG", "WEBP", "PNG"):
            size = _SIZES_LARGE[(i // 7) % len(_SIZES_LARGE)]
        else:
            size = _SIZES_MEDIUM[-1]
        if fmt in ("BMP", "TIFF", "PNG") and size[0] * size[1] > 640 * 480:
            size = (640, 480) if fmt != "PNG" else size
        noise = float(rng.uniform(2, 14)) if size[0] * size[1] <= 800 * 600 else float(rng.uniform(1, 3))
        if fmt == "PNG" and size[0] * size[1] > 800 * 600:
            noise = 0.0
        img = _scene(rng, *size, noise=noise)
        name = f"img_{i:04d}.{_EXT[fmt]}"
        path = w.path(ds, name)
        _save_image(img, path, fmt, quality=int(rng.integers(70, 93)))
        meta = _street_metadata(rnd, i) if i % 9 != 4 else None
        rows.append(w.spec(name, path, meta))

    # an animated GIF is still one IMAGE row
    path = w.path(ds, "crossing_loop.gif")
    _write_animated_gif(rng, path, (240, 160), 6)
    rows.append(w.spec("crossing_loop.gif", path, {"split": "train", "animated": True, "frames": 6}))

    # image groups (3-10 frames, mixed sizes and formats allowed in a group)
    for g, (title, n, fmt, size) in enumerate(
        [
            ("intersection-burst-01", 4, "JPEG", (640, 480)),
            ("parking-lot-multi-cam", 6, "PNG", (320, 240)),
            ("dashcam 2024-03-02 / clip 7", 8, "WEBP", (480, 360)),
        ]
    ):
        folder = f"group_{g:02d}"
        children = []
        for k in range(n):
            img = _scene(rng, *size, t=k, noise=float(rng.uniform(2, 8)))
            name = f"frame{k + 1}.{_EXT[fmt]}"
            path = w.path(ds, folder, name)
            _save_image(img, path, fmt, quality=80)
            children.append(w.spec(name, path, {"frame": k + 1, "exposure_ms": round(rnd.uniform(2, 30), 2)}))
        rows.append(
            w.group(
                title,
                "image_group",
                w.root / ds / folder,
                children,
                {"split": "train", "cameras": n, "site": {"id": 100 + g}},
            )
        )
    # a burst whose members all carry the same title
    children = []
    for k in range(3):
        path = w.path(ds, "group_burst", f"IMG_{k}.jpg")
        _save_image(_scene(rng, 200, 150, t=k, noise=4), path, "JPEG")
        children.append(w.spec("IMG.jpg", path, None))
    rows.append(w.group("burst (same member names)", "image_group", w.root / ds / "group_burst", children))

    # an image sequence: same size, a scene evolving over time
    seq_seed = int(rng.integers(1 << 31))
    children = []
    for k in range(10):
        img = _scene(np.random.default_rng(seq_seed), 320, 240, t=k, noise=0)
        img = Image.fromarray(
            np.clip(
                np.asarray(img, dtype=np.int16) + rng.normal(0, 3, size=(240, 320, 3)).astype(np.int16), 0, 255
            ).astype(np.uint8)
        )
        name = f"seq_{k + 1:03d}.jpg"
        path = w.path(ds, "sequence_traffic", name)
        _save_image(img, path, "JPEG", quality=82)
        children.append(w.spec(name, path))
    w.path(ds, "sequence_traffic", ".image-sequence").write_bytes(b"")
    rows.append(
        w.group(
            "traffic-timelapse",
            "image_sequence",
            w.root / ds / "sequence_traffic",
            children,
            {"fps": 2, "source": "cam-02", "split": "val"},
        )
    )
    return DatasetSpec(title=ds, rows=rows, description="Synthetic street scenes: images, image groups, a sequence")


def _medical(w: _Writer, rng: np.random.Generator) -> DatasetSpec:
    ds = "medical"
    rows: list[FileSpec | GroupSpec] = []
    for s, (modality, size, n, desc, patient) in enumerate(
        [
            ("CT", 128, 12, "CT CHEST W/O CONTRAST", "PHANTOM^ALICE"),
            ("MR", 96, 6, "MR BRAIN T1 AX", "PHANTOM^BOB"),
        ]
    ):
        study = make_uid(SEED, "study", s)
        series = make_uid(SEED, "series", s)
        vol = _phantom_volume(rng, size, n, modality)
        folder = f"series_{modality.lower()}"
        children = []
        # file names deliberately not in slice order: the reader must sort by InstanceNumber
        for z in range(n):
            inst = z + 1
            name = f"IM{(inst * 37) % 100:04d}.dcm"
            path = w.path(ds, folder, name)
            write_dicom_slice(
                path,
                vol[z],
                study_uid=study,
                series_uid=series,
                sop_instance_uid=make_uid(SEED, "sop", s, inst),
                instance_number=inst,
                modality=modality,
                patient_name=patient,
                patient_id=f"EMU-{s + 1:04d}",
                series_description=desc,
                slice_location=z * 2.5,
            )
            children.append(w.spec(name, path))
        findings = [{"label": "nodule", "slice": n // 2, "confidence": 0.82}] if modality == "CT" else []
        rows.append(
            w.group(
                desc,
                "dicom_series",
                w.root / ds / folder,
                children,
                {
                    "modality": modality,
                    "body_part": "CHEST" if modality == "CT" else "HEAD",
                    "patient": {"id": f"EMU-{s + 1:04d}", "age": 40 + 7 * s, "sex": "O"},
                    "findings": findings,
                },
            )
        )

    vol = _phantom_volume(rng, 48, 16, "MR")  # [z, y, x] -> NIfTI [x, y, z]
    path = w.path(ds, "brain_t1.nii.gz")
    write_nifti(path, np.transpose(vol, (2, 1, 0)), voxel_mm=(1.0, 1.0, 2.5))
    rows.append(w.spec("brain_t1.nii.gz", path, {"modality": "MR", "sequence": "T1", "voxel_mm": [1, 1, 2.5]}))
    vol = _phantom_volume(rng, 32, 8, "CT")
    path = w.path(ds, "phantom_ct.nii")
    write_nifti(path, np.transpose(vol, (2, 1, 0)), voxel_mm=(1.5, 1.5, 3.0))
    rows.append(w.spec("phantom_ct.nii", path, {"modality": "CT", "uncompressed": True}))

    path = w.path(ds, "radiology_report.pdf")
    write_pdf(
        path,
        "Radiology report - CT chest",
        [
            "Patient: PHANTOM^ALICE (EMU-0001)    Study date: 2024-01-15",
            "Technique: axial CT of the chest without contrast, 2.5 mm slices.",
            "Findings: a 9 mm well-circumscribed nodule in the right mid zone.",
            "No pleural effusion. Heart size within normal limits.",
            "Impression: indeterminate pulmonary nodule; follow-up CT in 3 months.",
            "",
            "This report was generated by the encordfs emulator and is not real.",
        ],
    )
    rows.append(w.spec("radiology_report.pdf", path, {"kind": "report", "signed_by": "Dr. Example"}))
    return DatasetSpec(title=ds, rows=rows, description="Synthetic phantoms: DICOM series, NIfTI volumes, a report")


def _hostile_long_title() -> str:
    title = "very-long-title-" + "é" * 140 + ".png"
    assert len(title.encode("utf-8")) == 300
    return title


def _media_misc(w: _Writer, rng: np.random.Generator, rnd: random.Random) -> DatasetSpec:
    ds = "media-misc"
    rows: list[FileSpec | GroupSpec] = []

    _copy_asset("sample-clip.mp4", path := w.path(ds, "clip.mp4"))
    rows.append(w.spec("traffic_clip.mp4", path, {"split": "train", "camera": {"id": "cam-02"}, "fps_hint": 10}))
    _copy_asset("sample-clip.webm", path := w.path(ds, "clip.webm"))
    rows.append(w.spec("test_pattern.webm", path, {"codec": "vp8"}))

    path = w.path(ds, "tone.wav")
    write_wav(path, seconds=2.0, rate=16000, channels=1, freqs=(440.0, 880.0, 1320.0))
    rows.append(w.spec("tone_440hz.wav", path, {"speaker": None, "language": "en", "snr_db": 42.5}))
    path = w.path(ds, "stereo.wav")
    write_wav(path, seconds=1.0, rate=22050, channels=2, freqs=(330.0, 495.0))
    rows.append(w.spec("stereo chord.wav", path, {"channels": ["L", "R"]}))
    _copy_asset("chime.flac", path := w.path(ds, "chime.flac"))
    rows.append(w.spec("chime.flac", path, {"source": "synth"}))
    _copy_asset("chime.mp3", path := w.path(ds, "chime.mp3"))
    rows.append(w.spec("chime.mp3", path))

    path = w.path(ds, "notes.txt")
    path.write_text(
        "Capture notes\n=============\n\nDay 1: overcast, light traffic.\n"
        "Day 2: rain after 15:00; cam-03 lens fogged.\nUnicode check: café, naïve, 東京 ✓\n",
        encoding="utf-8",
    )
    rows.append(w.spec("notes.txt", path, {"author": "bob@example.com"}))
    path = w.path(ds, "labels.json")
    path.write_text(
        '{\n  "classes": ["car", "pedestrian", "cyclist"],\n  "version": 3,\n'
        '  "colors": {"car": "#ff0000", "pedestrian": "#00ff00"}\n}\n',
        encoding="utf-8",
    )
    rows.append(w.spec("labels.json", path, {"schema": "v3"}))
    path = w.path(ds, "guidelines.html")
    path.write_text(
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>Labelling guidelines</title>'
        "</head>\n<body><h1>Labelling guidelines</h1><p>Draw tight boxes. Ignore reflections."
        "</p><ul><li>car</li><li>pedestrian</li></ul></body></html>\n",
        encoding="utf-8",
    )
    rows.append(w.spec("guidelines.html", path))
    path = w.path(ds, "annotations.xml")
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<annotations><image id="1" name="cat.jpg">'
        '<box label="cat" xtl="10" ytl="12" xbr="80" ybr="60"/></image></annotations>\n',
        encoding="utf-8",
    )
    rows.append(w.spec("annotations.xml", path, {"format": "cvat"}))

    hostile: list[tuple[str, str, tuple[int, int]]] = [
        ("cat.jpg", "JPEG", (320, 240)),
        ("cat.jpg", "JPEG", (200, 150)),  # exact duplicate title, different image
        ("Dog.png", "PNG", (160, 120)),
        ("dog.png", "PNG", (160, 120)),  # case-only duplicate
        ("left/right.jpg", "JPEG", (256, 256)),
        ("back\\slash.jpg", "JPEG", (96, 96)),
        ("café – naïve 東京.png", "PNG", (200, 150)),
        ("🐈‍⬛ black cat 😺.jpg", "JPEG", (160, 120)),
        (_hostile_long_title(), "PNG", (64, 48)),
        ("  spaced out.jpg  ", "JPEG", (160, 120)),
        (".", "JPEG", (64, 48)),
        ("..", "JPEG", (64, 48)),
        (".hidden.png", "PNG", (96, 96)),
        ("scan_0001", "JPEG", (320, 240)),  # no extension: the filesystem adds one from the MIME type
        ("scan_0001.jpg", "JPEG", (320, 240)),  # ...which then collides with this one
        ("photo.PNG", "WEBP", (160, 120)),  # title says PNG, bytes are WebP
    ]
    for k, (title, fmt, size) in enumerate(hostile):
        path = w.path(ds, f"hostile_{k:02d}.{_EXT[fmt]}")
        _save_image(_scene(rng, *size, noise=6), path, fmt)
        meta = _street_metadata(rnd, 1000 + k) if k % 3 != 2 else None
        rows.append(w.spec(title, path, meta))
    return DatasetSpec(title=ds, rows=rows, description="Video, audio, text, and rows with hostile titles")


def generate(dest: Path) -> list[DatasetSpec]:
    """Write the sample workspace under ``dest`` and return its datasets (see the module docstring)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    w = _Writer(dest.resolve())
    rng = np.random.default_rng(SEED)
    rnd = random.Random(SEED)
    datasets = [_street_scenes(w, rng, rnd), _medical(w, rng), _media_misc(w, rng, rnd)]
    return sorted(datasets, key=lambda d: d.title)
