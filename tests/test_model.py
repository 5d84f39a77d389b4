"""manifests/model.py: canonical JSON, ids, strict parsing, and the size/chunk summaries."""
from __future__ import annotations

import json
import os

import blake3
import pytest

from manifests.errors import ManifestError
from manifests.model import (FORMAT, MTIME_NS_MAX, MTIME_NS_MIN, VERSION, ChunkRef, Entry, Manifest, canonical,
                             is_hash, is_mtime_ns, manifest_id, parse_manifest)

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
    ("type", "fifo", "type"),
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


# -- hostile nesting: malformed, never a crash ---------------------------------------------------

def _nest(depth: int, kind: str = "list") -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [100, 900, 2_000, 100_000])
@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("where", ["extra", "meta", "version", "entry", "chunk", "top"])
def test_deeply_nested_json_is_malformed_not_a_crash(depth, kind, where):
    """Nesting deeper than the interpreter's stack (json.loads raises RecursionError) or just
    under it (json.dumps of the re-check may): always ManifestError, with or without an id."""
    deep = _nest(depth, kind)
    base = canonical(as_obj(Manifest(name="x", entries=(file_entry("f", [10], [H[0]]),)))).decode()
    data = {
        "extra": base[:-1] + f',"zz":{deep}}}',
        "meta": base.replace('"meta":{}', f'"meta":{{"k":{deep}}}'),
        "version": base.replace('"version":1', f'"version":{deep}'),
        "entry": base.replace('"blake3"', f'"a":{deep},"blake3"', 1),
        "chunk": base.replace('"chunks":[[', f'"chunks":[{deep},['),
        "top": deep,
    }[where].encode()
    assert data != base.encode()
    for expected in (None, manifest_id(data)):
        err = reject(data, expected_id=expected)
        assert len(str(err)) < 300


def test_deep_nesting_message_names_the_problem():
    data = b'{"meta":' + _nest(100_000).encode() + b"}"
    reject(data, "nested too deeply")


# -- names and labels: same character rules as paths ---------------------------------------------

HOSTILE_TEXT = {"C0": "\x1b[2J", "NUL": "\x00", "DEL": "\x7f", "C1": "\x9b2J", "NEL": "\x85",
                "lone-surrogate": "\udcff", "high-surrogate": "\ud800", "RLO": "\u202e", "LRE": "\u202a",
                "PDI": "\u2069", "RLM": "\u200f", "ALM": "\u061c"}


@pytest.mark.parametrize("field", ["name", "label"])
@pytest.mark.parametrize("label", list(HOSTILE_TEXT))
def test_rejects_unsafe_characters_in_name_and_label(field, label):
    obj = as_obj(sample())
    obj[field] = f"llama{HOSTILE_TEXT[label]}v"
    err = reject(obj, f"{field} has a ")
    assert not any(ch in str(err) for ch in HOSTILE_TEXT.values())  # the message never carries them
    m = Manifest(name="llama", entries=(), **{field: f"{HOSTILE_TEXT[label]}"}) if field == "label" else \
        Manifest(name=HOSTILE_TEXT[label], entries=())
    with pytest.raises(ManifestError, match=f"{field} has a "):
        parse_manifest(m.canonical_json(), expected_id=m.id)


def test_rejects_empty_label():
    obj = as_obj(sample())
    obj["label"] = ""
    reject(obj, "label")


def test_ordinary_unicode_names_and_hostile_meta_values_are_accepted():
    """Names may be any text a person types; meta values are free-form (shown escaped)."""
    hostile = "".join(v for k, v in HOSTILE_TEXT.items() if "surrogate" not in k) + "\nsecond line"
    m = Manifest(name="模型 llama-3.1 ☃ \u200d", label="v1.0 ü", entries=(), meta={"note": hostile, "k\x1b": "v"})
    back = parse_manifest(m.canonical_json(), expected_id=m.id)
    assert back.meta["note"] == hostile and back.name == m.name and back.label == m.label


def test_rejects_lone_surrogate_in_entry_path():
    """A path with no UTF-8 form can be neither a file name nor a catalog row."""
    for s in ("\ud800", "\udcff", "\udfff"):
        obj = _file_obj()
        obj["entries"][0]["path"] = f"dir/a{s}b"
        reject(obj, "lone surrogate")
        obj = as_obj(Manifest(name="x", entries=(Entry(path=f"d{s}", type="dir", mode=0o755),)))
        reject(obj, "lone surrogate")


def test_error_messages_stay_short_for_huge_values():
    obj = as_obj(sample())
    obj["version"] = "9" * 100_000
    assert len(str(reject(obj, "version"))) < 200
    obj["version"] = list(range(100_000))
    assert len(str(reject(obj, "version"))) < 200


# -- mtime: only what restore can set ------------------------------------------------------------

def test_mtime_bounds_are_exactly_what_os_utime_accepts(tmp_path):
    """MTIME_NS_MIN/MAX are the limits of os.utime on this platform: both bounds are set
    without error, one nanosecond beyond either is refused."""
    f = tmp_path / "f"
    f.write_bytes(b"")
    fd = os.open(f, os.O_RDONLY)
    try:
        for ns in (MTIME_NS_MIN, MTIME_NS_MAX, 0, -1, 1_700_000_000_123_456_789):
            os.utime(fd, ns=(ns, ns))
        for ns in (MTIME_NS_MIN - 1, MTIME_NS_MAX + 1, 2**64 * 10**9):
            with pytest.raises(OverflowError):
                os.utime(fd, ns=(ns, ns))
            with pytest.raises(OverflowError):
                os.utime(f, ns=(ns, ns))
    finally:
        os.close(fd)
    assert MTIME_NS_MIN < -(2**63) and MTIME_NS_MAX > 2**63  # every st_mtime_ns a 64-bit kernel reports


@pytest.mark.parametrize("mtime", [MTIME_NS_MIN, MTIME_NS_MAX, 0, -1, -(2**63), 2**63])
def test_mtime_within_bounds_round_trips(mtime):
    e = Entry(path="f", type="file", mode=0o644, size=0, mtime_ns=mtime, blake3=H[0], sha256=H[1])
    m = Manifest(name="x", entries=(e,))
    assert parse_manifest(m.canonical_json(), expected_id=m.id).entries[0].mtime_ns == mtime


@pytest.mark.parametrize("mtime", [MTIME_NS_MAX + 1, MTIME_NS_MIN - 1, 10**40, -(10**40)])
def test_rejects_mtime_restore_cannot_set(mtime):
    reject(_with_file(mtime_ns=mtime), "mtime")
    assert not is_mtime_ns(mtime)


def test_nesting_at_the_edge_of_the_stack_is_malformed():
    """Sweep the depths around the interpreter's limit, where json.loads still succeeds but
    re-serialising for the canonical check runs out of stack: still ManifestError."""
    import sys
    base = canonical(as_obj(Manifest(name="x", entries=()))).decode()
    limit = sys.getrecursionlimit()
    for depth in range(limit - 80, limit + 5):
        reject((base[:-1] + f',"zz":{_nest(depth)}}}').encode())


def test_out_of_stack_while_re_serialising_is_malformed(monkeypatch):
    """The canonical re-check serialises what json.loads built; if that runs out of stack
    (the encoder counts depth its own way, and the caller's stack varies) it is the
    manifest's fault, reported as malformed, not an internal error."""
    import manifests.model as model
    data = sample().canonical_json()

    def no_stack(obj):
        raise RecursionError("maximum recursion depth exceeded while encoding a JSON object")
    monkeypatch.setattr(model, "canonical", no_stack)
    reject(data, "nested too deeply")


# -- end to end: verify --deep passes only what restore can restore --------------------------------

@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    """A local store with one real archive; returns (cli args, a good file entry) to build
    hand-made manifests that reuse its chunks."""
    from tests.helpers import make_checkpoint, run_cli
    root = tmp_path_factory.mktemp("hostile")
    ckpt = make_checkpoint(root / "ckpt", layers=1, dim=32)
    g = ["--store", str(root / "store"), "--catalog", str(root / "catalog.db")]
    r = run_cli(*g, "archive", str(ckpt), "--name", "m", "--json")
    assert r.code == 0, r.err
    shown = run_cli(*g, "show", r.json()["id"], "--json").json()["manifest"]
    src = next(e for e in shown["entries"] if e["path"] == "ckpt/config.json")
    good = Entry(path="ckpt/config.json", type="file", mode=0o644, size=src["size"], mtime_ns=src["mtime_ns"],
                 blake3=src["blake3"], sha256=src["sha256"], chunks=tuple(ChunkRef(*c) for c in src["chunks"]))
    return root, g, good


CASES = {f"path-{k}": {"path": f"ckpt/a{v}b"} for k, v in HOSTILE_TEXT.items()}
CASES.update({f"dir-{k}": {"dir": f"d{v}"} for k, v in (("C1", "\x9b"), ("RLO", "\u202e"),
                                                         ("lone-surrogate", "\udc80"))})
CASES.update({f"name-{k}": {"name": f"m{v}"} for k, v in HOSTILE_TEXT.items()})
CASES.update({f"label-{k}": {"label": f"v{v}"} for k, v in HOSTILE_TEXT.items()})
CASES.update({"component-256-bytes": {"path": "ckpt/" + "\U0001F916" * 64},
              "mtime-max+1": {"mtime_ns": MTIME_NS_MAX + 1}, "mtime-min-1": {"mtime_ns": MTIME_NS_MIN - 1},
              "mtime-huge": {"mtime_ns": 10**40}})
FINE = {"plain": {}, "mtime-max": {"mtime_ns": MTIME_NS_MAX}, "mtime-min": {"mtime_ns": MTIME_NS_MIN},
        "component-255-bytes": {"path": "ckpt/" + "模" * 85}, "unicode": {"path": "ckpt/模型 ☃ \u200d.json",
                                                                           "name": "модель", "label": "v1 ü"}}


def _hand_made(good: Entry, case: dict) -> Manifest:
    from dataclasses import replace
    f = replace(good, path=case.get("path", good.path), mtime_ns=case.get("mtime_ns", good.mtime_ns))
    entries = [Entry(path="ckpt", type="dir", mode=0o755), f]
    if "dir" in case:
        entries.append(Entry(path=f"ckpt/{case['dir']}", type="dir", mode=0o755))
    return Manifest(name=case.get("name", "evil"), label=case.get("label"), entries=tuple(entries))


def _store_and_verify(hostile_store, case: dict):
    from archiver import layout
    from tests.helpers import RawStore, run_cli
    root, g, good = hostile_store
    m = _hand_made(good, case)
    RawStore(str(root / "store")).write(layout.manifest(m.id), m.canonical_json())
    v = run_cli(*g, "verify", "--deep", "--json", m.id)
    return root, g, m, v


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_verify_deep_and_restore_refuse_what_cannot_be_restored(hostile_store, case):
    """Each class of unrestorable content (unsafe characters in a path, a directory, the
    name or the label; an over-long component; an mtime os.utime cannot set) is a problem
    for `verify --deep` (exit 1, JSON report) and `restore` refuses it before writing."""
    from tests.helpers import run_cli
    root, g, m, v = _store_and_verify(hostile_store, CASES[case])
    assert v.code == 1, v.out + v.err
    assert v.err == ""
    rep = v.json()
    assert not rep["ok"] and rep["manifests"] == [m.id]
    assert {p["kind"] for p in rep["problems"]} <= {"manifest", "unsafe-path"} and rep["problems"]
    field = next(k for k in CASES[case] if k != "dir") if set(CASES[case]) != {"dir"} else "path"
    why = {"path": ("control", "surrogate", "bidirectional", "too long"), "name": ("name has a",),
           "label": ("label has a",), "mtime_ns": ("mtime",)}[field]
    assert any(w in p["detail"] for p in rep["problems"] for w in why), rep["problems"]
    dest = root / f"out-{case}"
    r = run_cli(*g, "restore", m.id, str(dest))
    assert r.code == 1 and r.out == "" and r.err.startswith("archiver: error: ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err and "internal error" not in r.err
    assert not dest.exists() or not any(dest.iterdir()), "nothing may be written"


@pytest.mark.parametrize("case", list(FINE), ids=list(FINE))
def test_verify_deep_passes_and_restore_restores_at_the_limits(hostile_store, case):
    """The other side of each bound: the same hand-made manifest with a value at the limit
    verifies deeply and restores."""
    from tests.helpers import run_cli
    root, g, m, v = _store_and_verify(hostile_store, FINE[case])
    assert v.code == 0, v.out + v.err
    dest = root / f"fine-{case}"
    r = run_cli(*g, "restore", m.id, str(dest))
    assert r.code == 0, r.err
    f = next(e for e in m.entries if e.is_file)
    assert (dest / f.path).stat().st_size == f.size


@pytest.mark.parametrize("field", ["--name", "--label"])
@pytest.mark.parametrize("label", list(HOSTILE_TEXT))
def test_archive_refuses_names_and_labels_verify_would_reject(hostile_store, tmp_path, field, label):
    """The archive side applies the same rule, so it never commits a manifest that verify
    calls malformed (a non-UTF-8 argument arrives as lone surrogates: refused too)."""
    from tests.helpers import run_cli
    root, g, _ = hostile_store
    f = tmp_path / "w.bin"
    f.write_bytes(b"w")
    value = f"x{HOSTILE_TEXT[label]}y"
    args = ["--name", value] if field == "--name" else ["--name", "ok", "--label", value]
    before = run_cli(*g, "list", "--json").json()
    r = run_cli(*g, "archive", str(f), *args)
    assert r.code == 2 and r.out == "" and r.err.count("\n") == 1, r.err
    assert f"invalid {field[2:]} " in r.err and not any(ch in r.err for ch in HOSTILE_TEXT.values())
    assert run_cli(*g, "list", "--json").json() == before


def test_lone_surrogate_in_stored_meta_is_malformed_not_a_crash():
    """A planted manifest with undecodable meta is refused by the reader (rebuild reports it)."""
    from manifests.model import canonical
    from manifests.errors import ManifestError as _ME
    for meta in ({"k": "v\udcff"}, {"k\udcff": "v"}):
        m = Manifest(name="n", entries=(), meta=meta)
        data = canonical(m.to_dict())
        with pytest.raises(_ME, match="not valid UTF-8"):
            parse_manifest(data)
