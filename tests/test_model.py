"""manifests/model.py: canonical JSON, ids, strict parsing, and the size/chunk summaries."""
from __future__ import annotations

import json

import blake3
import pytest

from manifests.errors import ManifestError
from manifests.model import (FORMAT, VERSION, ChunkRef, Entry, Manifest, canonical, is_hash,
                             manifest_id, parse_manifest)

H = [blake3.blake3(bytes([i])).hexdigest() for i in range(8)]


def file_entry(path: str, sizes: list[int], hashes: list[str], *, stored: list[int] | None = None,
               mode: int = 0o644) -> Entry:
    chunks, off = [], 0
    for i, (n, h) in enumerate(zip(sizes, hashes)):
        chunks.append(ChunkRef(off, n, h, (stored or sizes)[i], "zstd"))
        off += n
    return Entry(path=path, type="file", mode=mode, size=off, mtime_ns=1_700_000_000_123_456_789,
                 blake3=H[6], sha256=H[7], format="safetensors", chunks=tuple(chunks))


def sample(entries_order: int = 1, meta: dict[str, str] | None = None) -> Manifest:
    entries = [
        Entry(path="ckpt", type="dir", mode=0o755),
        file_entry("ckpt/a.bin", [10, 20], [H[0], H[1]], stored=[5, 8]),
        file_entry("ckpt/b.bin", [20, 7], [H[1], H[2]], stored=[8, 7]),
        file_entry("ckpt/empty", [], []),
        Entry(path="ckpt/sub", type="dir", mode=0o700),
    ]
    return Manifest(name="llama", label="v1", entries=tuple(entries[::entries_order]),
                    meta=meta if meta is not None else {"b": "2", "a": "1", "ü": "ß"}, parent=H[3])


def as_obj(m: Manifest) -> dict:
    return json.loads(m.canonical_json())


def reject(obj_or_bytes, match: str | None = None, expected_id: str | None = None) -> ManifestError:
    data = obj_or_bytes if isinstance(obj_or_bytes, bytes) else canonical(obj_or_bytes)
    with pytest.raises(ManifestError, match=match) as ei:
        parse_manifest(data, expected_id=expected_id)
    msg = str(ei.value)
    assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"
    return ei.value


# -- canonical form and id ---------------------------------------------------------------------

def test_canonical_json_is_deterministic_and_order_independent():
    a = sample(1, {"b": "2", "a": "1", "ü": "ß"})
    b = sample(-1, {"ü": "ß", "a": "1", "b": "2"})
    assert a.entries != b.entries  # really different orders going in
    assert a.canonical_json() == b.canonical_json()
    assert a.id == b.id
    assert a.canonical_json() == sample().canonical_json()  # and stable across constructions


def test_canonical_json_is_compact_sorted_ascii():
    data = sample().canonical_json()
    assert isinstance(data, bytes)
    data.decode("ascii")  # ASCII only
    assert all(b < 0x80 for b in data)
    assert b"\\u00fc" in data  # non-ASCII escaped, not raw UTF-8
    assert b" " not in data and b"\n" not in data
    obj = json.loads(data)
    assert list(obj) == sorted(obj)
    assert [e["path"] for e in obj["entries"]] == sorted(e["path"] for e in obj["entries"])
    assert obj["format"] == FORMAT and obj["version"] == VERSION
    assert json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode() == data


def test_id_is_blake3_hex_of_canonical_bytes():
    m = sample()
    assert m.id == blake3.blake3(m.canonical_json()).hexdigest()
    assert m.id == manifest_id(m.canonical_json())
    assert is_hash(m.id) and len(m.id) == 64


def test_id_changes_with_content():
    m = sample()
    other = Manifest(name=m.name, label="v2", entries=m.entries, meta=m.meta, parent=m.parent)
    assert other.id != m.id


def test_keys_helpers():
    from archiver import layout
    assert layout.chunk(H[0]) == f"chunks/{H[0][:2]}/{H[0]}"
    assert layout.manifest(H[1]) == f"manifests/{H[1]}.json"
    assert not is_hash(H[0].upper()) and not is_hash(H[0][:-1]) and not is_hash(None)


# -- parse round trip ----------------------------------------------------------------------------

def test_parse_round_trips():
    m = sample()
    data = m.canonical_json()
    back = parse_manifest(data, expected_id=m.id)
    assert back.canonical_json() == data
    assert back.id == m.id
    assert back.name == "llama" and back.label == "v1" and back.parent == H[3]
    assert back.meta == {"a": "1", "b": "2", "ü": "ß"}
    by_path = {e.path: e for e in back.entries}
    assert by_path["ckpt/a.bin"] == next(e for e in m.entries if e.path == "ckpt/a.bin")
    assert by_path["ckpt/sub"].type == "dir" and by_path["ckpt/sub"].mode == 0o700
    assert by_path["ckpt/empty"].size == 0 and by_path["ckpt/empty"].chunks == ()


def test_parse_without_label_parent_and_meta():
    m = Manifest(name="x", entries=())
    back = parse_manifest(m.canonical_json(), expected_id=m.id)
    assert back == m


def test_negative_mtime_is_allowed():
    e = Entry(path="old", type="file", mode=0o644, size=0, mtime_ns=-5, blake3=H[0], sha256=H[1])
    m = Manifest(name="x", entries=(e,))
    assert parse_manifest(m.canonical_json()).entries[0].mtime_ns == -5


# -- rejections ----------------------------------------------------------------------------------

def test_rejects_wrong_id_on_tampered_byte():
    m = sample()
    data = bytearray(m.canonical_json())
    i = data.index(b"llama")
    data[i] = ord("L")
    reject(bytes(data), "does not match its id", expected_id=m.id)
    reject(m.canonical_json(), "does not match its id", expected_id=H[0])


def test_rejects_non_canonical_whitespace():
    obj = as_obj(sample())
    data = json.dumps(obj, sort_keys=True, separators=(", ", ": "), ensure_ascii=True).encode()
    reject(data, "canonical")
    reject(sample().canonical_json() + b"\n", "canonical")
    # even when the id matches the (non-canonical) bytes
    reject(data, "canonical", expected_id=manifest_id(data))


def test_rejects_reordered_keys():
    obj = as_obj(sample())
    reordered = dict(reversed(list(obj.items())))
    data = json.dumps(reordered, separators=(",", ":"), ensure_ascii=True).encode()
    assert data != canonical(obj)
    reject(data, "canonical", expected_id=manifest_id(data))


def test_rejects_unescaped_non_ascii():
    obj = as_obj(sample())
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    reject(data, "canonical")


def test_accepted_bytes_always_hash_to_the_parsed_manifest_id():
    """Whatever parse_manifest accepts must re-serialise to the very same bytes, else the
    parsed manifest's id would differ from the id the bytes were fetched under."""
    base = as_obj(sample())
    unsorted = dict(base, entries=list(reversed(base["entries"])))
    missing_label = {k: v for k, v in base.items() if k != "label"}
    extra_key = dict(base, extra="x")
    extra_entry_key = dict(base, entries=[dict(base["entries"][0], size=5)] + base["entries"][1:])
    bool_version = dict(base, version=True)
    float_version = json.loads(canonical(base).replace(b'"version":1', b'"version":1.0'))
    for obj in (unsorted, missing_label, extra_key, extra_entry_key, bool_version, float_version):
        data = canonical(obj)
        reject(data, expected_id=manifest_id(data))


def test_rejects_invalid_json():
    reject(b"{not json", "not valid JSON")
    reject(b"\xff\xfe", "not valid JSON")
    reject(b"", "not valid JSON")


def test_rejects_non_object():
    reject(b"[]", "not an object")


@pytest.mark.parametrize("key,value,match", [
    ("format", "other-manifest", "format"),
    ("version", 2, "version"),
    ("version", "1", "version"),
    ("name", "", "name"),
    ("name", 3, "name"),
    ("label", 1, "label"),
    ("meta", {"a": 1}, "meta"),
    ("meta", [], "meta"),
    ("parent", "abc", "parent"),
    ("parent", H[0].upper(), "parent"),
    ("entries", {}, "entries"),
])
def test_rejects_bad_top_level_fields(key, value, match):
    obj = as_obj(sample())
    obj[key] = value
    reject(obj, match)


def _file_obj() -> dict:
    return as_obj(Manifest(name="x", entries=(file_entry("f", [10, 20], [H[0], H[1]]),)))


def _with_file(**changes) -> dict:
    obj = _file_obj()
    obj["entries"][0].update(changes)
    return obj


@pytest.mark.parametrize("field,value,match", [
    ("blake3", "0" * 63, "blake3"),
    ("blake3", "G" * 64, "blake3"),
    ("sha256", H[0].upper(), "sha256"),
    ("sha256", None, "sha256"),
    ("size", -1, "size"),
    ("size", True, "size"),
    ("size", 30.0, "size"),
    ("mtime_ns", True, "mtime"),
    ("mtime_ns", "1", "mtime"),
    ("mode", -1, "mode"),
    ("mode", True, "mode"),
    ("mode", 0o10000, "mode"),
    ("mode", "644", "mode"),
    ("type", "symlink", "type"),
    ("type", None, "type"),
    ("path", 5, "path"),
    ("format", None, "format"),
    ("chunks", "x", "chunks"),
])
def test_rejects_bad_entry_fields(field, value, match):
    reject(_with_file(**{field: value}), match)


def test_rejects_entry_not_object():
    obj = _file_obj()
    obj["entries"] = ["f"]
    reject(obj, "entry is not an object")


def test_rejects_bad_chunk_hash():
    obj = _file_obj()
    obj["entries"][0]["chunks"][1][2] = "z" * 64
    reject(obj, "chunk hash")


def test_rejects_non_contiguous_offsets():
    obj = _file_obj()
    obj["entries"][0]["chunks"][1][0] = 11  # gap
    reject(obj, "not contiguous")
    obj = _file_obj()
    obj["entries"][0]["chunks"][1][0] = 9  # overlap
    reject(obj, "not contiguous")
    obj = _file_obj()
    obj["entries"][0]["chunks"][0][0] = 1  # does not start at 0
    reject(obj, "not contiguous")


def test_rejects_chunks_not_adding_up_to_size():
    reject(_with_file(size=31), "do not add up")
    reject(_with_file(size=29), "do not add up")
    obj = _file_obj()
    obj["entries"][0]["chunks"] = []
    reject(obj, "do not add up")


def test_rejects_zero_length_chunk():
    obj = _file_obj()
    obj["entries"][0]["chunks"].append([30, 0, H[2], 0, "zstd"])
    reject(obj, "chunk length")


@pytest.mark.parametrize("index,value,match", [
    (0, -10, "contiguous"),
    (1, -20, "chunk length"),
    (1, True, "chunk length"),
    (3, -1, "stored size"),
    (3, True, "stored size"),
    (4, 7, "codec"),
])
def test_rejects_bad_chunk_ints(index, value, match):
    obj = _file_obj()
    obj["entries"][0]["chunks"][1][index] = value
    if index == 0:
        obj["entries"][0]["chunks"][0][index] = value
    reject(obj, match)


def test_rejects_wrong_chunk_record_arity():
    obj = _file_obj()
    obj["entries"][0]["chunks"][0].append("extra")
    reject(obj, "chunk record")
    obj = _file_obj()
    obj["entries"][0]["chunks"][0] = obj["entries"][0]["chunks"][0][:4]
    reject(obj, "chunk record")
    obj = _file_obj()
    obj["entries"][0]["chunks"][0] = {"offset": 0}
    reject(obj, "chunk record")


def test_rejects_oversized_manifest(monkeypatch):
    import manifests.model as model
    monkeypatch.setattr(model, "MAX_MANIFEST_BYTES", 10)
    reject(sample().canonical_json(), "too large")


# -- summaries -----------------------------------------------------------------------------------

def test_unique_chunks_stored_and_total_size():
    m = sample()
    uniq = m.unique_chunks()
    assert set(uniq) == {H[0], H[1], H[2]}
    assert uniq[H[1]].offset == 10  # first occurrence (ckpt/a.bin) kept
    assert m.total_size == 30 + 27 + 0
    assert m.stored_size == 5 + 8 + 7  # H[1] counted once
    assert [e.path for e in m.files] == ["ckpt/a.bin", "ckpt/b.bin", "ckpt/empty"]


def test_summaries_of_empty_manifest():
    m = Manifest(name="x", entries=(Entry(path="d", type="dir", mode=0o755),))
    assert m.unique_chunks() == {} and m.stored_size == 0 and m.total_size == 0 and m.files == []
