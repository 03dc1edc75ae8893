"""Tests for the emulator's media prober, folder importer and sample-workspace generator."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encordfs.emulator import importer, media, sample
from encordfs.emulator.spec import DatasetSpec, FileSpec, GroupSpec, MediaInfo

ASSETS = Path(str(resources.files("encordfs.emulator").joinpath("assets")))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _image(path: Path, size: tuple[int, int], fmt: str) -> Path:
    rng = np.random.default_rng(size[0] * 7 + size[1])
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if fmt == "GIF":
        img = img.quantize(colors=32)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


def _dicom(path: Path, instance: int, *, series: str = "1.2.3.4", rows: int = 8, cols: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sample.write_dicom_slice(
        path,
        np.arange(rows * cols, dtype=np.int16).reshape(rows, cols),
        study_uid="1.2.3",
        series_uid=series,
        sop_instance_uid=f"1.2.3.4.{instance}",
        instance_number=instance,
    )
    return path


# ------------------------------------------------------------------------------------------ probe


def test_probe_mp4_asset() -> None:
    info = media.probe(ASSETS / "sample-clip.mp4")
    assert info == MediaInfo(
        data_type="VIDEO", mime_type="video/mp4", width=320, height=240, duration_s=2.0, fps=10.0, frame_count=20
    )
    assert (ASSETS / "sample-clip.mp4").stat().st_size <= 300_000


def test_probe_webm_asset() -> None:
    info = media.probe(ASSETS / "sample-clip.webm")
    assert info is not None
    assert (info.data_type, info.mime_type) == ("VIDEO", "video/webm")
    assert (info.width, info.height, info.duration_s, info.fps, info.frame_count) == (160, 120, 1.0, 10.0, 10)


def _audio_16bit(mime: str, duration_s: float, rate: int, codec: str, channels: int) -> MediaInfo:
    """What ``probe`` should say of a 16-bit audio file."""
    return MediaInfo(
        data_type="AUDIO",
        mime_type=mime,
        duration_s=duration_s,
        audio_sample_rate=rate,
        audio_bit_depth=16,
        audio_codec=codec,
        audio_num_channels=channels,
    )


def test_probe_flac_and_mp3_assets() -> None:
    flac = media.probe(ASSETS / "chime.flac")
    assert flac == _audio_16bit("audio/flac", 1.5, 22050, "flac", 1)
    mp3 = media.probe(ASSETS / "chime.mp3")
    assert mp3 is not None and mp3.mime_type == "audio/mpeg" and mp3.audio_codec == "mp3"
    assert mp3.audio_sample_rate == 22050 and mp3.audio_num_channels == 1
    assert mp3.duration_s == pytest.approx(1.5, abs=0.1)  # Xing frame count includes encoder padding


@pytest.mark.parametrize(
    ("name", "fmt", "size", "mime"),
    [
        ("a.jpg", "JPEG", (64, 48), "image/jpeg"),
        ("b.jpeg", "JPEG", (33, 17), "image/jpeg"),
        ("c.png", "PNG", (100, 7), "image/png"),
        ("d.webp", "WEBP", (40, 30), "image/webp"),
        ("e.bmp", "BMP", (12, 34), "image/bmp"),
        ("f.tif", "TIFF", (20, 10), "image/tiff"),
        ("g.tiff", "TIFF", (21, 11), "image/tiff"),
        ("h.gif", "GIF", (50, 25), "image/gif"),
        ("lying.jpg", "PNG", (16, 16), "image/png"),  # bytes win over the name for the MIME type
    ],
)
def test_probe_images(tmp_path: Path, name: str, fmt: str, size: tuple[int, int], mime: str) -> None:
    info = media.probe(_image(tmp_path / name, size, fmt))
    assert info == MediaInfo(data_type="IMAGE", mime_type=mime, width=size[0], height=size[1])


def test_probe_wav(tmp_path: Path) -> None:
    sample.write_wav(tmp_path / "mono.wav", seconds=2.0, rate=16000)
    sample.write_wav(tmp_path / "stereo.wav", seconds=0.5, rate=44100, channels=2)
    assert media.probe(tmp_path / "mono.wav") == _audio_16bit("audio/wav", 2.0, 16000, "pcm_s16le", 1)
    stereo = media.probe(tmp_path / "stereo.wav")
    assert stereo is not None and stereo.audio_num_channels == 2 and stereo.duration_s == 0.5


def test_probe_float_wav_uses_riff_fallback(tmp_path: Path) -> None:
    rate, n = 8000, 4000
    data = np.zeros(n, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    (tmp_path / "f.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    info = media.probe(tmp_path / "f.wav")
    assert info is not None
    assert (info.audio_codec, info.audio_bit_depth, info.duration_s, info.audio_sample_rate) == (
        "pcm_f32le",
        32,
        0.5,
        rate,
    )


def test_probe_dicom_and_header(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "x.dcm", 7, rows=10, cols=12)
    assert media.probe(path) == MediaInfo(
        data_type="DICOM",
        mime_type="application/dicom",
        width=12,
        height=10,
        dicom_study_uid="1.2.3",
        dicom_series_uid="1.2.3.4",
        dicom_instance_uid="1.2.3.4.7",
    )
    header = media.read_dicom_header(path)
    assert header == media.DicomHeader(
        rows=10, columns=12, study_uid="1.2.3", series_uid="1.2.3.4", sop_instance_uid="1.2.3.4.7", instance_number=7
    )


def _implicit(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, elem, len(value)) + value


def test_probe_dicom_implicit_vr_with_undefined_length_sequence(tmp_path: Path) -> None:
    syntax = b"1.2.840.10008.1.2\x00"
    meta = struct.pack("<HH2sH", 2, 0x10, b"UI", len(syntax)) + syntax
    seq = (
        struct.pack("<HHI", 0x0008, 0x1140, 0xFFFFFFFF)  # Referenced Image Sequence, undefined length
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)  # item, undefined length
        + _implicit(0x0008, 0x1155, b"9.9.9\x00")
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    ds = (
        _implicit(0x0008, 0x0018, b"5.6.7\x00")
        + seq
        + _implicit(0x0020, 0x000D, b"5.6\x00")
        + _implicit(0x0020, 0x000E, b"5.6.1\x00")
        + _implicit(0x0020, 0x0013, b"3 ")
        + _implicit(0x0028, 0x0010, struct.pack("<H", 4))
        + _implicit(0x0028, 0x0011, struct.pack("<H", 5))
        + _implicit(0x7FE0, 0x0010, b"\x00" * 40)
    )
    (tmp_path / "i.dcm").write_bytes(b"\x00" * 128 + b"DICM" + meta + ds)
    info = media.probe(tmp_path / "i.dcm")
    assert info is not None
    assert (info.width, info.height, info.dicom_instance_uid, info.dicom_series_uid) == (5, 4, "5.6.7", "5.6.1")
    header = media.read_dicom_header(tmp_path / "i.dcm")
    assert header is not None and header.instance_number == 3


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_probe_nifti(tmp_path: Path, name: str) -> None:
    sample.write_nifti(tmp_path / name, np.zeros((9, 7, 5), dtype=np.int16))
    assert media.probe(tmp_path / name) == MediaInfo(
        data_type="NIFTI", mime_type="application/x-nifti", width=9, height=7, frame_count=5
    )


def test_probe_documents(tmp_path: Path) -> None:
    sample.write_pdf(tmp_path / "r.pdf", "Title (with parens)", ["line one", "line two"])
    assert media.probe(tmp_path / "r.pdf") == MediaInfo(data_type="PDF", mime_type="application/pdf")
    for name, mime in [
        ("a.txt", "text/plain"),
        ("b.json", "application/json"),
        ("c.html", "text/html"),
        ("d.xml", "application/xml"),
    ]:
        (tmp_path / name).write_text('{"k": 1}', encoding="utf-8")
        assert media.probe(tmp_path / name) == MediaInfo(data_type="PLAIN_TEXT", mime_type=mime)


@pytest.mark.parametrize(
    ("name", "data_type", "mime"),
    [
        ("x.mp4", "VIDEO", "video/mp4"),
        ("x.mov", "VIDEO", "video/quicktime"),
        ("x.webm", "VIDEO", "video/webm"),
        ("x.mkv", "VIDEO", "video/x-matroska"),
        ("x.png", "IMAGE", "image/png"),
        ("x.jpg", "IMAGE", "image/jpeg"),
        ("x.wav", "AUDIO", "audio/wav"),
        ("x.flac", "AUDIO", "audio/flac"),
        ("x.mp3", "AUDIO", "audio/mpeg"),
        ("x.pdf", "PDF", "application/pdf"),
        ("x.json", "PLAIN_TEXT", "application/json"),
        ("x.txt", "PLAIN_TEXT", "text/plain"),
        ("x.nii", "NIFTI", "application/x-nifti"),
        ("x.nii.gz", "NIFTI", "application/x-nifti"),
        ("x.dcm", "DICOM", "application/dicom"),
    ],
)
@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff" * 50])
def test_unparseable_file_keeps_type_with_null_fields(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    data_type: str,
    mime: str,
    content: bytes,
) -> None:
    (tmp_path / name).write_bytes(content)
    with caplog.at_level(logging.WARNING):
        info = media.probe(tmp_path / name)
    assert info == MediaInfo(data_type=data_type, mime_type=mime)  # type: ignore[arg-type]
    empty_text_is_fine = name == "x.txt" and not content
    assert any("cannot parse" in m for m in _warnings(caplog)) != empty_text_is_fine


def _box(typ: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), typ) + body


def _full(version_flags: int) -> bytes:
    return struct.pack(">I", version_flags)


def test_probe_fragmented_mp4(tmp_path: Path) -> None:
    """Empty moov sample tables; the frames live in moof fragments (trex/tfhd/trun durations)."""
    tkhd = _box(
        b"tkhd", _full(3), struct.pack(">IIIII", 0, 0, 1, 0, 0), b"\x00" * 52, struct.pack(">II", 640 << 16, 360 << 16)
    )
    mdhd = _box(b"mdhd", _full(0), struct.pack(">IIIIHH", 0, 0, 1000, 0, 0, 0))
    hdlr = _box(b"hdlr", _full(0), struct.pack(">I4s", 0, b"vide"), b"\x00" * 13)
    stbl = _box(
        b"stbl", _box(b"stts", _full(0), struct.pack(">I", 0)), _box(b"stsz", _full(0), struct.pack(">II", 0, 0))
    )
    trak = _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, _box(b"minf", stbl)))
    mvhd = _box(b"mvhd", _full(0), struct.pack(">IIII", 0, 0, 1000, 0), b"\x00" * 80)
    trex = _box(b"trex", _full(0), struct.pack(">IIIII", 1, 1, 40, 0, 0))  # 40 ms per sample by default
    moov = _box(b"moov", mvhd, trak, _box(b"mvex", trex))
    frag1 = _box(
        b"moof",
        _box(b"traf", _box(b"tfhd", _full(0), struct.pack(">I", 1)), _box(b"trun", _full(0), struct.pack(">I", 25))),
    )
    frag2 = _box(
        b"moof",
        _box(
            b"traf",
            _box(b"tfhd", _full(0x08), struct.pack(">II", 1, 40)),
            _box(b"trun", _full(0x100), struct.pack(">I", 3), struct.pack(">III", 40, 40, 40)),
        ),
    )
    mdat = _box(b"mdat", b"\x00" * 16)
    (tmp_path / "f.mp4").write_bytes(
        _box(b"ftyp", b"iso5", b"\x00\x00\x02\x00", b"iso5") + moov + frag1 + mdat + frag2 + mdat
    )
    assert media.probe(tmp_path / "f.mp4") == MediaInfo(
        data_type="VIDEO", mime_type="video/mp4", width=640, height=360, duration_s=1.12, fps=25.0, frame_count=28
    )


def test_truncated_mp4_and_webm(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = (ASSETS / "sample-clip.mp4").read_bytes()
    moov = data.index(b"moov") - 4
    (tmp_path / "cut.mp4").write_bytes(data[: moov + 200])
    webm = (ASSETS / "sample-clip.webm").read_bytes()
    (tmp_path / "cut.webm").write_bytes(webm[: len(webm) // 2])
    with caplog.at_level(logging.WARNING):
        mp4 = media.probe(tmp_path / "cut.mp4")
        cut_webm = media.probe(tmp_path / "cut.webm")
    assert mp4 == MediaInfo(data_type="VIDEO", mime_type="video/mp4")
    # a truncated WebM still has its header: size and duration, frame count estimated from fps
    assert cut_webm is not None and (cut_webm.width, cut_webm.height) == (160, 120)
    assert _warnings(caplog)


def test_unknown_extension_and_unreadable(tmp_path: Path) -> None:
    (tmp_path / "x.xyz").write_bytes(b"data")
    (tmp_path / "noext").write_bytes(b"data")
    assert media.probe(tmp_path / "x.xyz") is None
    assert media.probe(tmp_path / "noext") is None
    with pytest.raises(OSError):
        media.probe(tmp_path / "missing.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(OSError):
        media.probe(tmp_path / "dir.png")


# --------------------------------------------------------------------------------------- importer


def test_natural_key() -> None:
    names = ["frame10.png", "Frame2.png", "frame1.png", "frame02.png", "a", "B", "frame2.png"]
    assert sorted(names, key=importer.natural_key) == [
        "a",
        "B",
        "frame1.png",
        "Frame2.png",
        "frame02.png",
        "frame2.png",
        "frame10.png",
    ]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    ds = root / "alpha"
    _image(ds / "a.jpg", (64, 48), "JPEG")
    (ds / "a.jpg.metadata.json").write_text(json.dumps({"split": "train", "labels": ["cat"]}))
    _image(ds / "b10.png", (10, 10), "PNG")
    _image(ds / "b9.png", (9, 9), "PNG")
    (ds / "b9.png.metadata.json").write_text("[1, 2]")  # not an object
    (ds / "b10.png.metadata.json").write_text("{broken")  # not JSON
    (ds / "orphan.png.metadata.json").write_text("{}")  # nothing beside it
    shutil.copyfile(ASSETS / "sample-clip.mp4", ds / "clip.mp4")
    (ds / "garbage.mp4").write_bytes(b"not a video at all")
    (ds / "notes.xyz").write_text("unknown type")
    _image(ds / ".hidden.png", (5, 5), "PNG")
    _dicom(ds / "lone.dcm", 1)
    # image group, natural order, a sidecar for the group and one for a member, a stray text file
    for n in (10, 2, 1):
        _image(ds / "burst" / f"frame{n}.png", (20 + n, 10), "PNG")
    (ds / "burst" / "frame2.png.metadata.json").write_text('{"frame": 2}')
    (ds / "burst" / "readme.txt").write_text("not an image")
    (ds / "burst" / "nested").mkdir()
    (ds / "burst.metadata.json").write_text('{"kind": "burst"}')
    # image sequence via the marker
    for n in (3, 1, 2):
        _image(ds / "timelapse" / f"t{n}.jpg", (32, 24), "JPEG")
    (ds / "timelapse" / importer.SEQUENCE_MARKER).write_text("")
    # DICOM series: names deliberately out of InstanceNumber order, one unparseable slice
    for name, inst in [("a.dcm", 3), ("b.dcm", 1), ("c.dcm", 2)]:
        _dicom(ds / "ct" / name, inst)
    (ds / "ct" / "0broken.dcm").write_bytes(b"nope")
    (ds / "empty").mkdir()
    # a symlinked file and a broken symlink
    outside = _image(tmp_path / "outside" / "real.png", (7, 3), "PNG")
    (ds / "link.png").symlink_to(outside)
    (ds / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    # an empty dataset, a hidden directory, a stray file in the root
    (root / "beta").mkdir()
    (root / ".cache").mkdir()
    _image(root / ".cache" / "x.png", (4, 4), "PNG")
    _image(root / "stray.jpg", (4, 4), "JPEG")
    return root


def test_importer_tree(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        datasets = importer.scan(tree)
    assert [d.title for d in datasets] == ["alpha", "beta"]
    alpha, beta = datasets
    assert beta.rows == []
    rows = {r.title: r for r in alpha.rows}
    assert [r.title for r in alpha.rows] == [
        "a.jpg",
        "b9.png",
        "b10.png",
        "burst",
        "clip.mp4",
        "ct",
        "garbage.mp4",
        "link.png",
        "lone.dcm",
        "timelapse",
    ]

    a = rows["a.jpg"]
    assert isinstance(a, FileSpec)
    assert a.client_metadata == {"split": "train", "labels": ["cat"]}
    assert a.media == MediaInfo(data_type="IMAGE", mime_type="image/jpeg", width=64, height=48)
    assert rows["b9.png"].client_metadata is None and rows["b10.png"].client_metadata is None

    clip = rows["clip.mp4"]
    assert isinstance(clip, FileSpec) and clip.media.fps == 10.0 and clip.media.frame_count == 20
    garbage = rows["garbage.mp4"]
    assert isinstance(garbage, FileSpec)
    assert garbage.media == MediaInfo(data_type="VIDEO", mime_type="video/mp4")

    link = rows["link.png"]
    assert isinstance(link, FileSpec) and link.path == (tree.parent / "outside" / "real.png").resolve()
    assert (link.media.width, link.media.height) == (7, 3)

    burst = rows["burst"]
    assert isinstance(burst, GroupSpec) and burst.kind == "image_group"
    assert burst.client_metadata == {"kind": "burst"}
    assert [c.title for c in burst.children] == ["frame1.png", "frame2.png", "frame10.png"]
    assert [c.client_metadata for c in burst.children] == [None, {"frame": 2}, None]

    seq = rows["timelapse"]
    assert isinstance(seq, GroupSpec) and seq.kind == "image_sequence"
    assert [c.title for c in seq.children] == ["t1.jpg", "t2.jpg", "t3.jpg"]

    ct = rows["ct"]
    assert isinstance(ct, GroupSpec) and ct.kind == "dicom_series"
    assert [c.title for c in ct.children] == ["b.dcm", "c.dcm", "a.dcm", "0broken.dcm"]
    assert ct.children[0].media.dicom_instance_uid == "1.2.3.4.1"
    assert ct.children[-1].media == MediaInfo(data_type="DICOM", mime_type="application/dicom")

    lone = rows["lone.dcm"]
    assert isinstance(lone, GroupSpec) and lone.kind == "dicom_series" and len(lone.children) == 1

    warned = "\n".join(_warnings(caplog))
    for fragment in [
        "b9.png.metadata.json",
        "b10.png.metadata.json",
        "orphan.png.metadata.json",
        "garbage.mp4",
        "notes.xyz",
        "readme.txt",
        "nested",
        "empty",
        "dangling.png",
        "stray.jpg",
        "0broken.dcm",
    ]:
        assert fragment in warned, fragment
    for fragment in [".hidden.png", ".cache", "a.jpg.metadata.json"]:
        assert fragment not in warned, fragment


def test_importer_mixed_dicom_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "root" / "ds" / "mixed"
    _dicom(folder / "s2.dcm", 2, series="9.1")
    _dicom(folder / "s1.dcm", 1, series="9.2")
    _image(folder / "pic.png", (4, 4), "PNG")
    (folder / importer.SEQUENCE_MARKER).write_text("")
    with caplog.at_level(logging.WARNING):
        [ds] = importer.scan(tmp_path / "root")
    [group] = ds.rows
    assert isinstance(group, GroupSpec) and group.kind == "dicom_series"
    assert [c.title for c in group.children] == ["s1.dcm", "s2.dcm"]
    warned = "\n".join(_warnings(caplog))
    assert "pic.png" in warned and importer.SEQUENCE_MARKER in warned and "SeriesInstanceUIDs" in warned


def test_importer_rejects_non_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        importer.scan(tmp_path / "missing")


# ----------------------------------------------------------------------------------------- sample


def _all_files(specs: list[DatasetSpec]) -> list[FileSpec]:
    out: list[FileSpec] = []
    for d in specs:
        for r in d.rows:
            out.extend(r.children if isinstance(r, GroupSpec) else [r])
    return out


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


_GENERATION_WARNINGS: list[str] = []


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[DatasetSpec]]:
    """One sample workspace for the module (generation takes a few seconds); its warnings are kept."""
    dest = tmp_path_factory.mktemp("sample")
    handler = _Collect()
    logger = logging.getLogger("encordfs")
    logger.addHandler(handler)
    try:
        specs = sample.generate(dest)
    finally:
        logger.removeHandler(handler)
    _GENERATION_WARNINGS[:] = handler.messages
    return dest, specs


def test_sample_generation_is_clean(generated: tuple[Path, list[DatasetSpec]]) -> None:
    assert _GENERATION_WARNINGS == []  # every file the sample writes probes cleanly


def test_sample_contents(generated: tuple[Path, list[DatasetSpec]]) -> None:
    dest, specs = generated
    assert len(specs) >= 3
    assert [d.title for d in specs] == ["media-misc", "medical", "street-scenes"]
    files = _all_files(specs)
    assert len({id(f) for f in files}) == len(files)
    for f in files:
        assert f.path.is_file() and f.path.is_relative_to(dest.resolve())
        assert f.media == media.probe(f.path)

    images = [f for f in files if f.media.data_type == "IMAGE"]
    assert len(images) >= 100
    assert {f.media.mime_type for f in images} >= {
        "image/jpeg",
        "image/png",
        "image/webp",
        "image/bmp",
        "image/tiff",
        "image/gif",
    }
    dims = {(f.media.width, f.media.height) for f in images}
    assert (64, 48) in dims and (1920, 1080) in dims and len(dims) >= 8
    assert len({f.path.stat().st_size for f in images}) >= 90  # not trivially compressible
    total = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert total < 40 * 1024 * 1024

    groups = [r for d in specs for r in d.rows if isinstance(r, GroupSpec)]
    kinds = {g.kind for g in groups}
    assert kinds == {"image_group", "image_sequence", "dicom_series"}
    for g in groups:
        if g.kind == "image_group":
            assert 3 <= len(g.children) <= 10
    series = [g for g in groups if g.kind == "dicom_series"]
    assert all(len(g.children) >= 5 for g in series)
    for g in series:
        headers = [media.read_dicom_header(c.path) for c in g.children]
        assert [h.instance_number for h in headers if h] == list(range(1, len(g.children) + 1))
        assert len({c.media.dicom_series_uid for c in g.children}) == 1
        assert all(c.media.width and c.media.height for c in g.children)

    by_type = {f.media.data_type for f in files}
    assert by_type >= {"IMAGE", "VIDEO", "AUDIO", "PDF", "PLAIN_TEXT", "NIFTI", "DICOM"}
    mp4 = next(f for f in files if f.media.mime_type == "video/mp4")
    assert (mp4.media.width, mp4.media.height, mp4.media.fps, mp4.media.frame_count) == (320, 240, 10.0, 20)
    wav = next(f for f in files if f.media.mime_type == "audio/wav")
    assert wav.media.duration_s and wav.media.audio_codec == "pcm_s16le"
    nifti = next(f for f in files if f.media.data_type == "NIFTI")
    assert nifti.media.width and nifti.media.frame_count
    assert {f.media.mime_type for f in files if f.media.data_type == "PLAIN_TEXT"} >= {
        "text/plain",
        "application/json",
        "text/html",
    }

    rows = [r for d in specs for r in d.rows]
    with_meta = [r for r in rows if r.client_metadata]
    assert len(with_meta) >= 0.6 * len(rows)
    assert any(isinstance(v, dict) for r in with_meta for v in r.client_metadata.values())  # type: ignore[union-attr]


def test_sample_hostile_titles(generated: tuple[Path, list[DatasetSpec]]) -> None:
    _, specs = generated
    rows = [r for d in specs for r in d.rows]
    titles = [r.title for r in rows]
    assert titles.count("cat.jpg") == 2
    cats = [r for r in rows if r.title == "cat.jpg"]
    assert isinstance(cats[0], FileSpec) and isinstance(cats[1], FileSpec) and cats[0].path != cats[1].path
    for t in [
        "Dog.png",
        "dog.png",
        "left/right.jpg",
        "café – naïve 東京.png",
        "..",
        ".",
        ".hidden.png",
        "scan_0001",
        "scan_0001.jpg",
    ]:
        assert t in titles, t
    assert any(any(ord(ch) > 0xFFFF for ch in t) for t in titles)  # emoji
    assert any(len(t.encode("utf-8")) == 300 for t in titles)
    assert any(t != t.strip() for t in titles)
    scan = next(r for r in rows if r.title == "scan_0001")
    assert isinstance(scan, FileSpec) and scan.media.mime_type == "image/jpeg"


def test_sample_is_deterministic_and_importable(generated: tuple[Path, list[DatasetSpec]], tmp_path: Path) -> None:
    dest, specs = generated
    again = sample.generate(tmp_path / "again")
    assert _digests(dest) == _digests(tmp_path / "again")

    def shape(s: list[DatasetSpec], root: Path) -> list[object]:
        return [
            (
                d.title,
                [
                    (
                        r.title,
                        r.client_metadata,
                        getattr(r, "kind", None),
                        [
                            (c.title, c.media, c.path.relative_to(root.resolve()))
                            for c in (r.children if isinstance(r, GroupSpec) else [r])
                        ],
                    )
                    for r in d.rows
                ],
            )
            for d in s
        ]

    assert shape(specs, dest) == shape(again, tmp_path / "again")

    # the on-disk layout imports back to the same rows (titles aside): same groups, metadata, media
    def by_path(s: list[DatasetSpec], root: Path) -> list[object]:
        out = []
        for d in s:
            for r in d.rows:
                kids = r.children if isinstance(r, GroupSpec) else [r]
                out.append(
                    (
                        d.title,
                        getattr(r, "kind", None),
                        json.dumps(r.client_metadata, sort_keys=True),
                        [(str(c.path.relative_to(root.resolve())), c.media, repr(c.client_metadata)) for c in kids],
                    )
                )
        return sorted(out, key=repr)

    assert by_path(importer.scan(dest), dest) == by_path(specs, dest)


def test_sample_pdf_is_well_formed(generated: tuple[Path, list[DatasetSpec]]) -> None:
    _, specs = generated
    pdf = next(f for f in _all_files(specs) if f.media.data_type == "PDF")
    data = pdf.path.read_bytes()
    assert data.startswith(b"%PDF-1.4") and data.rstrip().endswith(b"%%EOF")
    startxref = int(data[data.rindex(b"startxref") + 9 :].split()[0])
    assert data[startxref : startxref + 4] == b"xref"
    # every xref offset points at its "N 0 obj"
    lines = data[startxref:].split(b"\n")
    count = int(lines[1].split()[1])
    for number in range(1, count):
        offset = int(lines[2 + number][:10])
        assert data[offset:].startswith(b"%d 0 obj" % number)
    assert io.BytesIO(data).read(5) == b"%PDF-"
