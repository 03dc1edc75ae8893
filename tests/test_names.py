"""The naming rules of core.names and their stickiness in the catalog (property-based)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from encordfs.core import names
from encordfs.core.catalog import Catalog, Entry, Kind
from harness.fakes import older_catalog

titles = st.text(min_size=0, max_size=400)


def _valid(name: str) -> bool:
    return (
        bool(name) and "/" not in name and "\x00" not in name and name not in (".", "..") and len(name.encode()) <= 255
    )


@given(titles, st.sampled_from([None, "image/jpeg", "video/mp4", "application/dicom", "text/plain"]), st.booleans())
def test_every_title_gives_a_valid_name(title: str, mime: str | None, is_dir: bool) -> None:
    name = names.base_name(title, mime, is_dir=is_dir)
    assert _valid(name), repr(name)
    assert name == name.strip()
    assert names.base_name(title, mime, is_dir=is_dir) == name  # deterministic


@given(titles, st.text(alphabet="0123456789abcdef-", min_size=8, max_size=36))
def test_disambiguated_names_are_valid_and_differ(title: str, uid: str) -> None:
    base = names.base_name(title, "image/png")
    other = names.disambiguated(base, uid)
    assert _valid(other)
    assert names.name_key(other) != names.name_key(base)


def test_specific_rules() -> None:
    assert names.base_name("left/right.jpg") == "left\u2215right.jpg"
    assert names.base_name("a\x00b.png") == "ab.png"
    assert names.base_name("..") == "_.."
    assert names.base_name(".") == "_."
    assert names.base_name("  spaced.jpg  ") == "spaced.jpg"
    assert names.base_name("") == "untitled"
    assert names.base_name("scan_0001", "image/jpeg") == "scan_0001.jpg"
    # Non-standard aliases services send (Encord: image/jpg), with parameters and any case.
    for mime, ext in (
        ("image/jpg", ".jpg"),
        ("IMAGE/JPG; charset=binary", ".jpg"),
        ("image/pjpeg", ".jpg"),
        ("image/x-png", ".png"),
        ("image/x-ms-bmp", ".bmp"),
        ("image/tif", ".tiff"),
        ("audio/x-wav", ".wav"),
        ("audio/mp3", ".mp3"),
        ("audio/x-flac", ".flac"),
        ("application/x-dicom", ".dcm"),
        ("video/x-msvideo", ".avi"),
    ):
        assert names.base_name("scan_0001", mime) == "scan_0001" + ext, mime
    assert names.base_name("volume.nii.gz", "application/x-nifti") == "volume.nii.gz"
    assert names.base_name("group", "image/jpeg", is_dir=True) == "group"
    long = names.base_name("é" * 300 + ".png")
    assert len(long.encode()) <= 255 and long.endswith(".png")


def _entry(uid: str, title: str) -> Entry:
    return Entry(Kind.ROW, uid, title, "image/jpeg", "item-" + uid, 1, 0.0, 0.0, {})


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet="abAB./ ", max_size=6), st.booleans()), min_size=1, max_size=12))
def test_names_unique_and_sticky(tmp_path_factory, rows: list[tuple[str, bool]]) -> None:
    catalog = Catalog(Path(tmp_path_factory.mktemp("cat")) / "c.sqlite")
    entries = [_entry(f"{i:08d}-uid", t) for i, (t, _) in enumerate(rows)]
    catalog.sync_children(1, entries, 0)
    first = {n.uid: n.name for n in catalog.children(1)}
    keys = [names.name_key(n) for n in first.values()]
    assert len(keys) == len(set(keys))
    assert all(_valid(n) for n in first.values())
    # Remove some rows and add new ones with colliding titles: survivors keep their names.
    kept = [e for e, (_, keep) in zip(entries, rows) if keep]
    added = [_entry(f"new{i:05d}-uid", e.title) for i, e in enumerate(entries)]
    catalog.sync_children(1, kept + added, 1)
    second = {n.uid: n.name for n in catalog.children(1)}
    for e in kept:
        assert second[e.uid] == first[e.uid]
    keys = [names.name_key(n) for n in second.values()]
    assert len(keys) == len(set(keys))
    catalog.close()


def test_inode_stable_and_case_only_duplicates(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite")
    catalog.sync_children(1, [_entry("aaaaaaaa1", "Dog.png"), _entry("bbbbbbbb2", "dog.png")], 0)
    got = {n.uid: (n.ino, n.name) for n in catalog.children(1)}
    assert got["aaaaaaaa1"][1] == "Dog.png"
    assert got["bbbbbbbb2"][1] == "dog~bbbbbbbb.png"
    catalog.sync_children(1, [_entry("bbbbbbbb2", "dog.png"), _entry("aaaaaaaa1", "Dog.png")], 1)
    again = {n.uid: (n.ino, n.name) for n in catalog.children(1)}
    assert again == got
    catalog.close()


def test_a_replaced_row_takes_the_plain_name(tmp_path: Path) -> None:
    """A row deleted and re-created with the same title (a new uid) is shown under the plain name."""
    catalog = Catalog(tmp_path / "c.sqlite")
    catalog.sync_children(1, [_entry("old00001", "w.jpg"), _entry("keep0001", "k.jpg")], 0)
    catalog.sync_children(1, [_entry("new00001", "w.jpg"), _entry("keep0001", "k.jpg")], 1)
    assert {n.uid: n.name for n in catalog.children(1)} == {"new00001": "w.jpg", "keep0001": "k.jpg"}
    # ...but a row that is still there keeps its name against a newcomer, wherever it is in the stream.
    catalog.sync_children(1, [_entry("new00002", "k.jpg"), _entry("new00001", "w.jpg"), _entry("keep0001", "k.jpg")], 2)
    assert {n.uid: n.name for n in catalog.children(1)} == {
        "new00001": "w.jpg",
        "keep0001": "k.jpg",
        "new00002": "k~new00002.jpg",
    }
    catalog.close()


def test_nfc_and_nfd_spellings_are_one_name_and_either_finds_it(tmp_path: Path) -> None:
    import unicodedata

    catalog = Catalog(tmp_path / "c.sqlite")
    nfc, nfd = unicodedata.normalize("NFC", "café.jpg"), unicodedata.normalize("NFD", "café.jpg")
    assert nfc != nfd
    catalog.sync_children(1, [_entry("a-uid-0001", nfd), _entry("b-uid-0002", nfc)], 1)
    shown = {n.uid: n.name for n in catalog.children(1)}
    assert shown["a-uid-0001"] == nfd  # the title's own bytes are shown
    assert shown["b-uid-0002"] != nfc and shown["b-uid-0002"].startswith("café~")  # not a second "café.jpg"
    for spelling in (nfc, nfd):
        found = catalog.lookup(1, spelling)
        assert found is not None and found.uid == "a-uid-0001"
        assert catalog.lookup_ino(1, spelling) == found.ino
    assert catalog.lookup(1, "CAFÉ.jpg") is None  # lookups stay case-sensitive


def test_titles_crafted_to_take_every_tilde_form_still_load(tmp_path: Path) -> None:
    """A base name plus its ~id forms for another row's id: that row still gets a unique name."""
    victim = "0123456789abcdef0123456789abcdef-victim"
    tag = "".join(c for c in victim if c.isalnum())
    crafted = ["shot.jpg", *(f"shot~{tag[:w]}.jpg" for w in (8, 16, 64))]
    entries = [_entry(f"attacker-{i:04d}", t) for i, t in enumerate(crafted)] + [_entry(victim, "shot.jpg")]
    catalog = Catalog(tmp_path / "c.sqlite")
    catalog.sync_children(1, entries, 1)
    got = {n.uid: n.name for n in catalog.children(1)}
    assert len(got) == len(entries) and len({names.name_key(n) for n in got.values()}) == len(entries)
    assert got[victim].startswith("shot~") and got[victim].endswith("~2.jpg")
    catalog.sync_children(1, list(reversed(entries)), 2)  # reloads keep every name (sticky)
    assert {n.uid: n.name for n in catalog.children(1)} == got


def test_an_older_catalog_gets_the_new_keys(tmp_path: Path) -> None:
    import unicodedata

    path = tmp_path / "c.sqlite"
    catalog = Catalog(path)
    catalog.sync_children(1, [_entry("a-uid-0001", unicodedata.normalize("NFD", "é.jpg"))], 1)
    catalog.close()
    older_catalog(path, 1, "UPDATE nodes SET name_key = lower(name)")  # what version 1 stored
    catalog = Catalog(path)
    assert catalog.lookup(1, unicodedata.normalize("NFC", "é.jpg")) is not None


def test_lookup_stat_forgives_normalization_but_not_case(tmp_path: Path) -> None:
    import unicodedata

    catalog = Catalog(tmp_path / "c.sqlite")
    catalog.sync_children(1, [_entry("a-uid-0001", unicodedata.normalize("NFD", "über.jpg"))], 1)
    found = catalog.lookup_stat(1, unicodedata.normalize("NFC", "über.jpg"))
    assert found is not None and found[0] == catalog.lookup_ino(1, unicodedata.normalize("NFD", "über.jpg"))
    assert catalog.lookup_stat(1, "ÜBER.jpg") is None
