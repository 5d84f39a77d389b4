"""Human output never hands a terminal raw control, bidi or lone-surrogate characters, and
hostile store content (deeply nested JSON) is reported, not crashed on.

`show`, `list`, `verify` and `restore` print names, labels, meta, paths and problem
details that come from manifests, the catalog or the store: any of them may be hostile
(ESC[2J clears the screen, U+009B is a one-byte CSI, U+202E reverses what follows). Each
such character is printed as an escape (`archiver.cli.printable`); `--json` output keeps
the exact values (JSON escapes them itself)."""
from __future__ import annotations


import pytest

from archiver import layout
from archiver.cli import printable
from archiver.repository import Repository
from archiver.settings import Settings
from manifests.model import ChunkRef, Entry, Manifest
from tests.helpers import RawStore, make_checkpoint, run_cli

C0 = [*range(0x20), 0x7F]
C1 = list(range(0x80, 0xA0))
SURROGATES = [0xD800, 0xDBFF, 0xDC00, 0xDC80, 0xDCFF, 0xDFFF]
BIDI = [0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069, 0x200E, 0x200F, 0x061C]
SEPARATORS = [0x2028, 0x2029]
UNSAFE = {chr(c) for c in C0 + C1 + SURROGATES + BIDI + SEPARATORS}
# what a hostile manifest might carry: clear screen, CSI, bidi override and isolate, bell,
# a lone surrogate (a non-UTF-8 command-line byte), CR/LF to forge extra lines, NUL, DEL
HOSTILE = "\x1b[2J\u202e\x9b31m\x07\udcff\u2066\r\nforged line\x00\x7f\u2028"
HOSTILE_UTF8 = HOSTILE.replace("\udcff", "")  # what an older archiver could have stored in meta


def assert_clean(text: str) -> None:
    """No unsafe character anywhere except the newlines that end each printed line."""
    for line in text.split("\n"):
        bad = sorted({f"U+{ord(ch):04X}" for ch in line if ch in UNSAFE})
        assert not bad, f"raw {bad} in {line!r}"


# -- the helper ------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", C0 + C1 + SURROGATES + BIDI + SEPARATORS)
def test_printable_escapes_every_unsafe_character(code):
    ch = chr(code)
    out = printable(f"a{ch}b")
    assert out == f"a{repr(ch)[1:-1]}b" and out != f"a{ch}b"  # as repr writes it, without quotes
    assert not UNSAFE.intersection(out) and out.isascii()


@pytest.mark.parametrize("text", ["plain", "模型/权重.bin", "café ☃ 🤖", "a\u00a0b", "👩\u200d💻", "back\\slash",
                                  "'quotes' \"double\"", "x=1,y=[2]", ""])
def test_printable_leaves_ordinary_text_alone(text):
    assert printable(text) == text


def test_printable_of_a_hostile_string_is_one_safe_line():
    out = printable(HOSTILE)
    assert_clean(out)
    assert "\n" not in out and "\\x1b[2J" in out and "\\u202e" in out and "\\x9b" in out and "\\udcff" in out
    assert printable(None) == "None" and printable(5) == "5"


# -- through the commands --------------------------------------------------------------------------

@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARCHIVER_STORE", str(tmp_path / "store"))
    for var in ("ARCHIVER_CATALOG", "ARCHIVER_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "ckpt", layers=1, dim=32)


def test_show_escapes_hostile_meta(env, ckpt):
    """Archive refuses control characters in meta now, but an older archiver stored meta
    values as free text: `show` prints each on its own single line, escaped; `show --json`
    keeps them exact."""
    r = run_cli("archive", str(ckpt), "--name", "m", "--meta", f"note={HOSTILE_UTF8}")
    assert r.code == 2 and "--meta" in r.err
    meta = {"note": HOSTILE_UTF8, "k\x1b]0;t\x07": HOSTILE_UTF8}
    m = Manifest(name="m", entries=(), meta=meta)
    settings = Settings.resolve()
    with Repository.open(settings, create=True):
        pass
    RawStore(str(env / "store")).write(layout.manifest(m.id), m.canonical_json())
    mid = m.id
    s = run_cli("show", mid)
    assert s.code == 0, s.err
    assert_clean(s.out)
    meta_lines = [line for line in s.out.splitlines() if line.startswith("meta:")]
    assert len(meta_lines) == 2 and "forged line" not in s.out.replace(printable(HOSTILE_UTF8), "")
    assert f"meta:    note={printable(HOSTILE_UTF8)}" in meta_lines
    j = run_cli("show", mid, "--json")
    assert j.json()["manifest"]["meta"] == meta


def test_list_and_verify_escape_a_hostile_name_and_label_in_the_catalog(env, ckpt):
    """A manifest recorded behind archive's back (by an older archiver, or a hand-edited
    catalog: commit_manifest itself now refuses it) puts a hostile name and label in the
    catalog: `list` shows them escaped; `show` refuses the manifest in one clean line;
    `verify` reports it."""
    from manifests.catalog import Catalog
    name, label = "evil\x1b[2J\u202e\x9b\r\nm", "v\x07\u2066\x85"
    m = Manifest(name=name, label=label, entries=(), meta={})
    settings = Settings.resolve()
    with Repository.open(settings, create=True):
        pass
    RawStore(str(env / "store")).write(layout.manifest(m.id), m.canonical_json())
    cat = Catalog(settings.catalog_path, settings.store_url)
    cat.record_manifest(m, m.canonical_json())
    cat.close()
    mid = m.id
    rows = run_cli("list", "--json").json()
    assert [(r["name"], r["label"]) for r in rows] == [(name, label)]
    out = run_cli("list")
    assert out.code == 0 and out.out.count("\n") == 1
    assert_clean(out.out)
    assert f"{printable(name)}@{printable(label)}" in out.out
    s = run_cli("show", mid)
    assert s.code == 1 and s.out == "" and s.err.count("\n") == 1 and "name has a" in s.err
    assert_clean(s.err)
    v = run_cli("verify", "--all")
    assert v.code == 1 and "manifest: manifest" in v.out
    assert_clean(v.out + v.err)


def test_verify_escapes_hostile_paths_and_store_keys_in_problem_lines(env, ckpt):
    """Problem lines carry manifest paths and store keys: a missing chunk in a file whose
    path is hostile, and a signature object under a hostile key, are reported escaped."""
    mid = run_cli("archive", str(ckpt), "--name", "m", "--json").json()["id"]
    shown = run_cli("show", mid, "--json").json()["manifest"]
    src = next(e for e in shown["entries"] if e["path"] == "ckpt/config.json")
    missing = ChunkRef(0, src["size"], "f" * 64, 10, "raw")
    path = "ckpt/a\x1b[2J\u202eb\x9b"
    bad = Entry(path=path, type="file", mode=0o644, size=src["size"], mtime_ns=0, blake3=src["blake3"],
                sha256=src["sha256"], chunks=(missing,))
    m = Manifest(name="evil", entries=(bad,))
    raw = RawStore(str(env / "store"))
    raw.write(layout.manifest(m.id), m.canonical_json())
    raw.write(layout.signature(m.id, "\x9b\u202e"), b"not json")
    v = run_cli("verify", m.id, "--json")
    kinds = {p["kind"] for p in v.json()["problems"]}
    assert v.code == 1 and {"unsafe-path", "missing-chunk", "signature"} <= kinds, v.out
    h = run_cli("verify", m.id)
    assert h.code == 1
    assert_clean(h.out + h.err)
    lines = h.out.splitlines()
    assert any(line.startswith("missing-chunk:") and printable(path) in line for line in lines), h.out
    assert any(line.startswith("signature:") and "\\x9b\\u202e.json" in line for line in lines), h.out
    assert len(lines) == len(v.json()["problems"]) + 1  # one line per problem, plus the summary


def test_restore_escapes_its_human_lines(env, ckpt, tmp_path):
    mid = run_cli("archive", str(ckpt), "--name", "m", "--json").json()["id"]
    dest = tmp_path / "out\x1b[2J\u202e\x9b"
    r = run_cli("restore", mid, str(dest))
    assert r.code == 0, r.err
    assert r.out.startswith("restored: ") and printable(str(dest)) in r.out
    assert_clean(r.out + r.err)
    # a damaged file: the "not restored" and "FAILED" lines are escaped too
    shown = run_cli("show", mid, "--json").json()["manifest"]
    first = next(e for e in shown["entries"] if e["type"] == "file" and e["chunks"])
    raw = RawStore(str(env / "store"))
    raw.mutate(layout.chunk(first["chunks"][0][2]), lambda b: b[:-1] + bytes([b[-1] ^ 1]))
    dest2 = tmp_path / "again\u2066\x85"
    r = run_cli("restore", mid, str(dest2))
    assert r.code == 1 and "not restored: " in r.err and "FAILED" in r.err and printable(str(dest2)) in r.err
    assert_clean(r.out + r.err)
    j = run_cli("restore", mid, str(tmp_path / "j\x1b"), "--json")
    assert j.code == 1 and j.json()["dest"] == str(tmp_path / "j\x1b")  # --json keeps the exact value


# -- deeply nested JSON in a stored manifest: a problem, not an internal error ---------------------

def _deep_manifest(depth: int) -> bytes:
    base = Manifest(name="deep", entries=()).canonical_json()
    return base[:-1] + b',"zz":' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("depth", [1_500, 100_000])
def test_verify_json_reports_a_deeply_nested_manifest(store_url, tmp_path, monkeypatch, depth):
    """A manifest object nested past the parser's stack, stored under its true id:
    `verify --json` prints its report (a manifest problem) and exits 1; show, restore and
    catalog rebuild each refuse in one line. On every store backend."""
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARCHIVER_STORE", store_url)
    monkeypatch.delenv("ARCHIVER_DEBUG", raising=False)
    ckpt = make_checkpoint(tmp_path / "ckpt", layers=1, dim=32)
    good = run_cli("archive", str(ckpt), "--name", "m", "--json").json()["id"]
    data = _deep_manifest(depth)
    from manifests.model import manifest_id
    mid = manifest_id(data)
    RawStore(store_url).write(layout.manifest(mid), data)
    r = run_cli("verify", mid, good, "--json")
    assert r.code == 1 and r.err == "", r.err
    rep = r.json()
    assert rep["manifests"] == [mid, good] and not rep["ok"]
    assert [(p["manifest"], p["kind"]) for p in rep["problems"]] == [(mid, "manifest")]
    assert "nested too deeply" in rep["problems"][0]["detail"]
    for args in (["show", mid], ["restore", mid, str(tmp_path / "out")]):
        e = run_cli(*args)
        assert e.code == 1 and e.out == "" and e.err.startswith("archiver: error: "), (args, e.err)
        assert e.err.count("\n") == 1 and "nested too deeply" in e.err and "internal error" not in e.err
    e = run_cli("catalog", "rebuild")  # skips and reports the bad one, records the rest
    assert e.code == 1 and "internal error" not in e.err
    skipped = [line for line in e.err.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 1 and mid[:16] in skipped[0] and "nested too deeply" in skipped[0]
    assert not (tmp_path / "out").exists()


def test_error_lines_are_escaped_too(tmp_path, monkeypatch):
    """An error that quotes a hostile source path prints it escaped, on one line."""
    from tests.helpers import run_cli
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    bad = tmp_path / "evil\x1b[2Jname\u202e"
    bad.mkdir()
    (bad / "link").symlink_to("/etc/passwd")
    r = run_cli("archive", str(bad), "--name", "m")
    assert r.code != 0 and r.err.count("\n") == 1
    assert "\x1b" not in r.err and "\u202e" not in r.err and "\\x1b" in r.err


def test_unsafe_path_message_stays_short():
    from manifests.errors import UnsafePathError
    msg = str(UnsafePathError("a/" * 2_000_000, "too long"))
    assert len(msg) < 500 and "4000000 characters" in msg
