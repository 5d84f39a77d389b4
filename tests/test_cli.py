"""The command-line surface: help, version, usage errors and exit codes, one JSON document
per --json command, and how --store/--catalog and ARCHIVER_STORE/ARCHIVER_CATALOG pick
the store and catalog. Mirrors archiver/cli.py; whole archive/verify/restore flows and
damage detection are in test_e2e.py. Everything runs in-process on local stores."""
from __future__ import annotations

import importlib.metadata
import json
import re

import pytest

from archiver.errors import ArchiverError
from tests.helpers import RawStore, make_checkpoint, run_cli

HEX64 = re.compile(r"^[0-9a-f]{64}$")
COMMANDS = [[], ["archive"], ["list"], ["show"], ["verify"], ["restore"], ["catalog"], ["catalog", "rebuild"],
            ["keygen"]]

# documented (README) or established --json keys
ARCHIVE_KEYS = {"id", "name", "label", "files", "dirs", "bytes_in", "bytes_stored", "new_bytes_stored", "chunks",
                "new_chunks", "seconds", "parent", "signed_by", "repaired_chunks", "retention", "files_reused",
                "resumed_files", "files_by_processes"}
LIST_KEYS = {"id", "name", "label", "parent", "recorded_at", "files", "size", "stored"}
VERIFY_KEYS = {"ok", "problems", "mode", "manifests", "chunks_checked", "chunks_read", "bytes_read", "files_hashed",
               "seconds", "audit_error", "event", "event_error", "not_checked_cold", "retention_checked", "thaw",
               "files_proven_earlier"}
PROBLEM_KEYS = {"manifest", "kind", "detail", "path", "offset", "length", "chunk"}
RESTORE_KEYS = {"ok", "problems", "id", "dest", "files", "dirs", "bytes", "seconds", "thaw", "links",
                "files_by_processes"}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """ARCHIVER_HOME in tmp, and no ambient store, catalog or debug setting."""
    h = tmp_path / "home"
    monkeypatch.setenv("ARCHIVER_HOME", str(h))
    for var in ("ARCHIVER_STORE", "ARCHIVER_CATALOG", "ARCHIVER_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    return h


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("src") / "ckpt", layers=2, dim=64)


@pytest.fixture
def store(home, tmp_path, monkeypatch) -> str:
    url = str(tmp_path / "store")
    monkeypatch.setenv("ARCHIVER_STORE", url)
    return url


@pytest.fixture
def archived(store, src) -> dict:
    r = run_cli("archive", str(src), "--name", "m", "--label", "v1", "--json")
    assert r.code == 0, r.err
    return r.json()


def jrun(*args: str, code: int = 0):
    """Run a --json command: exit `code`, stdout exactly one JSON document, stderr empty."""
    r = run_cli(*args)
    assert r.code == code, (args, r.out, r.err)
    assert r.err == "", (args, r.err)
    return json.loads(r.out)  # raises on anything but a single JSON document


def one_line_error(r, as_json: bool | None = None) -> None:
    """One line on stderr; stdout empty, or with --json exactly one error document."""
    json_out(r) if as_json or (as_json is None and r.out) else None
    if not r.out:
        assert r.out == ""
    assert "Traceback" not in r.err
    assert r.err.startswith("archiver: error: ") and r.err.count("\n") == 1 and r.err.endswith("\n"), r.err


def other_id(mid: str) -> str:
    """A full id that is certainly not `mid` and shares no 8-digit prefix with it."""
    return ("0" if mid[0] != "0" else "1") + mid[1:]


# -- help and version ---------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_exits_0_without_side_effects(home, cmd, flag):
    r = run_cli(*cmd, flag)
    assert r.code == 0, r.err
    assert r.out.startswith("Usage: archiver" + "".join(" " + c for c in cmd)) and r.err == ""
    assert not home.exists(), "--help must not create a store or a catalog"


def test_top_level_help_lists_every_command(home):
    out = run_cli("--help").out
    for cmd in ("archive", "list", "show", "verify", "restore", "catalog", "keygen"):
        assert re.search(rf"^\s+{cmd}\s", out, re.M), cmd
    for opt in ("--store", "--catalog", "--version"):
        assert opt in out


def test_help_documents_each_commands_options(home):
    expect = {"archive": ["--name", "--label", "--meta", "--sign-key", "--json"],
              "list": ["--name", "--json"], "show": ["--json"],
              "verify": ["--all", "--deep", "--sample", "--trust-key", "--json"],
              "restore": ["--include", "--force", "--trust-key", "--json"],
              "keygen": ["--json"]}
    for cmd, opts in expect.items():
        out = run_cli(cmd, "--help").out
        for opt in opts:
            assert opt in out, (cmd, opt)
    assert "--json" in run_cli("catalog", "rebuild", "--help").out


def test_version(home):
    r = run_cli("--version")
    assert r.code == 0 and r.err == ""
    assert r.out == f"archiver, version {importlib.metadata.version('archiver')}\n"
    assert not home.exists()


# -- usage errors: exit 2 -------------------------------------------------------------------------

CLICK = "click"  # errors found by click's parser (before archiver's own checks)
USAGE_CASES = [
    pytest.param(["archive", "{src}"], "--name", CLICK, id="archive-missing-name"),
    pytest.param(["archive", "--name", "m2"], "PATHS", CLICK, id="archive-missing-paths"),
    pytest.param(["verify", "m", "--all"], "REF... or --all", None, id="verify-ref-and-all"),
    pytest.param(["verify"], "REF... or --all", None, id="verify-neither"),
    pytest.param(["verify", "--deep", "--json"], "REF... or --all", None, id="verify-neither-json"),
    pytest.param(["frobnicate"], "frobnicate", CLICK, id="unknown-command"),
    pytest.param(["list", "--bogus"], "--bogus", CLICK, id="unknown-option"),
    pytest.param(["archive", "{src}", "--name", "m2", "--meta", "owner"], "KEY=VALUE", None, id="meta-no-equals"),
    pytest.param(["archive", "{src}", "--name", "m2", "--meta", "=x"], "KEY=VALUE", None, id="meta-empty-key"),
    pytest.param(["verify", "m", "--sample", "0"], "--sample", None, id="sample-0"),
    pytest.param(["verify", "m", "--sample", "-0.5"], "--sample", None, id="sample-negative"),
    pytest.param(["verify", "m", "--sample", "1.5"], "--sample", None, id="sample-above-1"),
    pytest.param(["verify", "--all", "--sample", "nan"], "--sample", None, id="sample-nan"),
    pytest.param(["verify", "--all", "--sample", "inf"], "--sample", None, id="sample-inf"),
    pytest.param(["verify", "m", "--sample", "half"], "--sample", CLICK, id="sample-not-a-number"),
    pytest.param(["verify", "m", "--trust-key", "zz"], "public key", None, id="bad-trust-key"),
    pytest.param(["restore", "m", "{tmp}/out", "--trust-key", "zz"], "public key", None, id="restore-bad-trust-key"),
    pytest.param(["archive", "{src}", "--name", "m2", "--label", ""], "invalid label", None, id="empty-label"),
    pytest.param(["--store", "ftp://host/x", "list"], "unsupported store URL", None, id="unsupported-scheme"),
]


def _fill(args, src, tmp_path):
    return [a.format(src=src, tmp=tmp_path) for a in args]


@pytest.mark.parametrize("args,fragment,origin", USAGE_CASES)
def test_usage_error_exits_2_without_traceback(archived, src, tmp_path, args, fragment, origin):
    r = run_cli(*_fill(args, src, tmp_path))
    assert r.code == 2, (r.out, r.err)
    assert "Traceback" not in r.err
    if "--json" in args:
        json_out(r)
    else:
        assert r.out == ""
    assert fragment in r.err
    # nothing was done: still the one archive, no restore destination
    assert [x["id"] for x in jrun("list", "--json")] == [archived["id"]]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,fragment,origin", USAGE_CASES)
def test_usage_error_is_one_line(archived, src, tmp_path, args, fragment, origin):
    r = run_cli(*_fill(args, src, tmp_path))
    assert r.code == 2
    assert r.err.count("\n") == 1 and fragment in r.err, r.err


def test_keygen_refuses_to_overwrite(home, tmp_path):
    key = tmp_path / "key"
    assert run_cli("keygen", str(key)).code == 0
    before = key.read_bytes(), (tmp_path / "key.pub").read_bytes()
    for target in (key, tmp_path / "key.pub"):
        r = run_cli("keygen", str(target), "--json")
        assert r.code == 2 and "refusing to overwrite" in r.err
        one_line_error(r)
    assert (key.read_bytes(), (tmp_path / "key.pub").read_bytes()) == before


@pytest.mark.parametrize("args", [["verify", "--all", "--sample", "0"], ["verify", "m", "--trust-key", "zz"]])
def test_usage_error_is_2_even_without_a_store(home, args):
    r = run_cli(*args)
    assert r.code == 2, r.err


# -- unknown references ---------------------------------------------------------------------------

def _unknown_refs(mid: str) -> list[str]:
    return ["nope", "m@no-such-label", other_id(mid), other_id(mid)[:8]]


@pytest.mark.parametrize("cmd", ["show", "verify", "restore"])
def test_unknown_ref_is_one_line_error(archived, tmp_path, cmd):
    for ref in _unknown_refs(archived["id"]):
        args = [cmd, ref] + ([str(tmp_path / "out")] if cmd == "restore" else [])
        r = run_cli(*args)
        one_line_error(r)
        assert ref.split("@")[-1] in r.err
    assert not (tmp_path / "out").exists()
    # one unknown ref among known ones fails the whole verify before anything is checked
    r = run_cli("verify", archived["id"], "nope")
    assert r.code == 2 and r.out == ""


@pytest.mark.parametrize("cmd", ["show", "verify", "restore"])
def test_unknown_ref_is_usage_error(archived, tmp_path, cmd):
    """README: exit 2 for usage errors; errors.UsageError: 'Bad arguments or an unknown reference (CLI exit 2)'."""
    for ref in _unknown_refs(archived["id"]):
        args = [cmd, ref] + ([str(tmp_path / "out")] if cmd == "restore" else [])
        assert run_cli(*args).code == 2, ref


def test_refs_resolve_by_id_prefix_name_and_label(archived, src):
    mid = archived["id"]
    later = jrun("archive", str(src), "--name", "m", "--label", "v2", "--json")["id"]
    for ref, want in ((mid, mid), (mid.upper(), mid), (mid[:6], mid), ("m@v1", mid), ("m", later), ("m@v2", later)):
        assert jrun("show", ref, "--json")["id"] == want, ref


# -- --json: one document on stdout, nothing else -----------------------------------------------

def test_archive_json(store, src, tmp_path):
    d = jrun("archive", str(src), "--name", "m", "--label", "v1", "--meta", "owner=infra", "--meta", "k=a=b",
             "--json")
    assert set(d) == ARCHIVE_KEYS
    assert HEX64.match(d["id"]) and d["name"] == "m" and d["label"] == "v1"
    assert d["files"] == 4 and d["dirs"] == 3 and d["parent"] is None and d["signed_by"] is None
    assert d["bytes_in"] == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert all(isinstance(d[k], int) for k in ("files", "dirs", "bytes_in", "bytes_stored", "new_bytes_stored",
                                               "chunks", "new_chunks"))
    assert jrun("show", d["id"], "--json")["manifest"]["meta"] == {"owner": "infra", "k": "a=b"}

    assert run_cli("keygen", str(tmp_path / "key")).code == 0
    signed = jrun("archive", str(src), "--name", "m", "--sign-key", str(tmp_path / "key"), "--json")
    assert set(signed) == ARCHIVE_KEYS
    assert signed["parent"] == d["id"] and signed["label"] is None
    assert re.fullmatch(r"[0-9a-f]{32}", signed["signed_by"])


def test_archive_human_output_is_the_id(store, src):
    r = run_cli("archive", str(src), "--name", "m")
    assert r.code == 0 and HEX64.match(r.out.strip()) and r.out.count("\n") == 1
    assert "files" in r.err and r.err.count("\n") == 1  # the summary goes to stderr


def test_list_json(archived, src):
    assert jrun("list", "--json") == [jrun("list", "--name", "m", "--json")[0]]
    second = jrun("archive", str(src), "--name", "other", "--json")
    rows = jrun("list", "--json")
    assert [r["id"] for r in rows] == [archived["id"], second["id"]]  # oldest first
    for row in rows:
        assert set(row) == LIST_KEYS
    row = rows[0]
    assert (row["name"], row["label"], row["parent"], row["files"], row["size"], row["stored"]) == (
        "m", "v1", None, archived["files"], archived["bytes_in"], archived["bytes_stored"])
    assert isinstance(row["recorded_at"], float)
    assert [r["id"] for r in jrun("list", "--name", "other", "--json")] == [second["id"]]
    assert jrun("list", "--name", "absent", "--json") == []


def test_show_json(archived):
    d = jrun("show", "m@v1", "--json")
    assert set(d) == {"id", "manifest", "summary"} and d["id"] == archived["id"]
    m = d["manifest"]
    assert {"name", "label", "meta", "parent", "entries"} <= set(m)
    assert (m["name"], m["label"], m["meta"], m["parent"]) == ("m", "v1", {}, None)
    files = [e for e in m["entries"] if e["type"] == "file"]
    assert len(files) == archived["files"]
    assert sum(e["size"] for e in files) == archived["bytes_in"]


@pytest.mark.parametrize("extra,mode", [([], "shallow"), (["--deep"], "deep"), (["--sample", "0.5"], "sample:0.5")])
def test_verify_json(archived, extra, mode):
    for ref in (["m"], ["--all"]):
        d = jrun("verify", *ref, *extra, "--json")
        assert set(d) == VERIFY_KEYS
        assert d["ok"] is True and d["problems"] == [] and d["mode"] == mode and d["audit_error"] is None
        assert d["manifests"] == [archived["id"]] and d["chunks_checked"] == archived["chunks"]
    if mode == "deep":
        assert d["files_hashed"] == archived["files"] and d["bytes_read"] == archived["bytes_in"]


def test_verify_and_restore_json_on_failure(archived, store, tmp_path):
    """A failed run still prints one JSON document (exit 1) whose problems say what and where."""
    mid = archived["id"]
    entries = jrun("show", mid, "--json")["manifest"]["entries"]
    vocab = next(e for e in entries if e["path"] == "ckpt/tokenizer/vocab.txt")
    (offset, length, h, _stored, _codec), = vocab["chunks"]
    RawStore(store).delete(f"chunks/{h[:2]}/{h}")

    d = jrun("verify", mid, "--json", code=1)
    assert set(d) == VERIFY_KEYS and d["ok"] is False
    (p,) = d["problems"]
    assert set(p) == PROBLEM_KEYS
    assert (p["manifest"], p["kind"], p["path"], p["offset"], p["length"], p["chunk"]) == (
        mid, "missing-chunk", "ckpt/tokenizer/vocab.txt", offset, length, h)

    d = jrun("restore", mid, str(tmp_path / "out"), "--json", code=1)
    assert set(d) == RESTORE_KEYS and d["ok"] is False
    assert d["files"] == archived["files"] - 1
    (p,) = d["problems"]  # one Problem shape for verify and restore
    assert set(p) == PROBLEM_KEYS
    assert (p["manifest"], p["kind"], p["path"], p["offset"], p["length"], p["chunk"]) == (
        mid, "missing-chunk", "ckpt/tokenizer/vocab.txt", offset, length, h)


def test_restore_json(archived, tmp_path):
    dest = tmp_path / "out"
    d = jrun("restore", "m@v1", str(dest), "--json")
    assert set(d) == RESTORE_KEYS
    assert d["ok"] is True and d["problems"] == [] and d["id"] == archived["id"]
    assert (d["files"], d["dirs"], d["bytes"]) == (archived["files"], archived["dirs"], archived["bytes_in"])
    assert d["dest"] == str(dest)
    assert (dest / "ckpt" / "config.json").is_file()


def test_keygen_json(home, tmp_path):
    d = jrun("keygen", str(tmp_path / "k"), "--json")
    assert d == {"private_key": str(tmp_path / "k"), "public_key": str(tmp_path / "k.pub")}
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"archiver-ed25519 [0-9a-f]{64}\n", (tmp_path / "k.pub").read_text())


def test_catalog_rebuild_json(archived, home):
    assert jrun("catalog", "rebuild", "--json") == {"added": [], "manifests": 1, "problems": [], "ok": True,
                                                        "events": 0, "packs": 0}
    for f in home.rglob("*.db*"):
        f.unlink()
    assert jrun("catalog", "rebuild", "--json") == {"added": [archived["id"]], "manifests": 1, "problems": [],
                                                    "ok": True, "events": 1, "packs": 0}  # the archive's ingestion event
    assert [r["id"] for r in jrun("list", "--json")] == [archived["id"]]


def json_out(r) -> dict:
    """With --json, a failure still prints one JSON document: ok false, the error, its exit code."""
    doc = json.loads(r.out)
    assert doc["ok"] is False and doc["exit_code"] == r.code and doc["error"] in r.err and doc["kind"]
    return doc


def test_errors_with_json_print_one_error_document(archived):
    for args in (["show", "nope", "--json"], ["verify", "--json"], ["list", "--bogus", "--json"]):
        r = run_cli(*args)
        assert r.code == 2 and r.err and "Traceback" not in r.err
        json_out(r)
    assert json_out(run_cli("show", "nope", "--json"))["ref"] == "nope"  # the error's fields ride along
    r = run_cli("show", "nope")
    assert r.out == "" and r.code == 2  # without --json, stdout stays empty


# -- choosing the store and the catalog -----------------------------------------------------------

def test_default_store_and_catalog_under_archiver_home(home, src):
    mid = jrun("archive", str(src), "--name", "m", "--json")["id"]
    assert (home / "store" / "store.json").is_file()
    assert (home / "store" / "manifests" / f"{mid}.json").is_file()
    assert (home / "catalog.db").is_file() and not (home / "catalogs").exists()
    # the default store named explicitly (as a path or a file:// URL) uses the same catalog
    for url in (str(home / "store"), (home / "store").as_uri()):
        assert [r["id"] for r in jrun("--store", url, "list", "--json")] == [mid]
    assert not (home / "catalogs").exists()


def test_store_env_and_flag_flag_wins(home, src, tmp_path, monkeypatch):
    env_store, flag_store = tmp_path / "env-store", tmp_path / "flag-store"
    monkeypatch.setenv("ARCHIVER_STORE", str(env_store))
    mid = jrun("--store", str(flag_store), "archive", str(src), "--name", "m", "--json")["id"]
    assert (flag_store / "manifests" / f"{mid}.json").is_file()
    assert not env_store.exists()
    # the env store alone: no store there yet
    r = run_cli("list", "--json")
    assert r.code == 2 and "no archiver store" in r.err and str(env_store) in r.err
    one_line_error(r)
    assert [x["id"] for x in jrun("--store", str(flag_store), "list", "--json")] == [mid]
    # the env variable works on its own too; a non-default store gets its own catalog file
    env_mid = jrun("archive", str(src), "--name", "e", "--json")["id"]
    assert (env_store / "manifests" / f"{env_mid}.json").is_file()
    assert [x["id"] for x in jrun("list", "--json")] == [env_mid]
    assert len(list((home / "catalogs").glob("*.db"))) == 2 and not (home / "catalog.db").exists()


def test_catalog_env_and_flag_flag_wins(store, src, tmp_path, monkeypatch):
    env_cat, flag_cat = tmp_path / "env.db", tmp_path / "flag.db"
    monkeypatch.setenv("ARCHIVER_CATALOG", str(env_cat))
    mid = jrun("--catalog", str(flag_cat), "archive", str(src), "--name", "m", "--json")["id"]
    assert flag_cat.is_file() and not env_cat.exists()
    assert [x["id"] for x in jrun("--catalog", str(flag_cat), "list", "--json")] == [mid]
    # the env catalog is a different, empty index of the same store (rebuildable from it)
    assert jrun("list", "--json") == []
    assert jrun("catalog", "rebuild", "--json")["added"] == [mid]
    assert env_cat.is_file()
    assert [x["id"] for x in jrun("list", "--json")] == [mid]


def test_catalog_bound_to_one_store_refuses_another(home, src, tmp_path):
    cat, a, b = str(tmp_path / "cat.db"), str(tmp_path / "a"), str(tmp_path / "b")
    mid = jrun("--store", a, "--catalog", cat, "archive", str(src), "--name", "m", "--json")["id"]
    jrun("--store", b, "--catalog", str(tmp_path / "b.db"), "archive", str(src), "--name", "m", "--json")
    for args in (["list", "--json"], ["show", "m"], ["verify", "--all"], ["catalog", "rebuild"],
                 ["archive", str(src), "--name", "m"], ["restore", "m", str(tmp_path / "out")]):
        r = run_cli("--store", b, "--catalog", cat, *args)
        assert r.code == 2, (args, r.err)
        one_line_error(r)
        assert "belongs to store" in r.err and "--catalog" in r.err
    assert not (tmp_path / "out").exists()
    # the catalog was not changed: it still serves its own store (also named by file:// URL)
    assert [x["id"] for x in jrun("--store", a, "--catalog", cat, "list", "--json")] == [mid]
    assert [x["id"] for x in jrun("--store", (tmp_path / "a").as_uri(), "--catalog", cat, "list", "--json")] == [mid]


# -- errors: one line, never a traceback ----------------------------------------------------------

def test_operational_errors_are_one_line(home, src, tmp_path):
    """Exit codes as they are today: 1 for a missing/broken store or catalog or a missing
    path, 2 for a bad sign key."""
    missing = str(tmp_path / "no-store")
    for args in (["list"], ["show", "m"], ["verify", "--all"], ["restore", "m", str(tmp_path / "out")],
                 ["catalog", "rebuild"]):
        r = run_cli("--store", missing, *args)
        assert r.code == 2 and "no archiver store" in r.err, (args, r.err)
        one_line_error(r)
    assert not (tmp_path / "no-store").exists() and not (tmp_path / "out").exists()

    store = str(tmp_path / "s")
    r = run_cli("--store", store, "archive", str(tmp_path / "absent"), "--name", "m")
    assert r.code == 1 and "no such file" in r.err
    one_line_error(r)
    r = run_cli("--store", store, "archive", str(src), "--name", "m", "--sign-key", str(tmp_path / "nokey"))
    assert r.code == 2 and "signing key" in r.err
    one_line_error(r)
    r = run_cli("--store", store, "archive", str(src), "--name", "m", "--sign-key", str(src / "config.json"))
    assert r.code == 2 and "private key" in r.err
    one_line_error(r)

    jrun("--store", store, "--catalog", str(tmp_path / "c.db"), "archive", str(src), "--name", "m", "--json")
    (tmp_path / "garbage.db").write_bytes(b"not a database" * 100)
    r = run_cli("--store", store, "--catalog", str(tmp_path / "garbage.db"), "list")
    assert r.code == 1 and "cannot open catalog" in r.err
    one_line_error(r)
    RawStore(store).write("store.json", b"{not json")
    r = run_cli("--store", store, "--catalog", str(tmp_path / "c.db"), "list")
    assert r.code == 1 and "not an archiver store" in r.err
    one_line_error(r)


def test_archiver_debug_shows_the_exception(archived, monkeypatch):
    monkeypatch.setenv("ARCHIVER_DEBUG", "1")
    with pytest.raises(ArchiverError, match="nope"):
        run_cli("show", "nope")


# -- store URLs that are not what the user meant (issue 14 item 3) --------------------------------

@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "s3:bucket", "S3:bucket/p", "file:/x", "http://h/x",
                                 "s3://bad name/p", "s3://-/p", "gs://bucket"])
def test_malformed_store_url_is_usage_error_and_writes_nothing(home, src, tmp_path, monkeypatch, url):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    r = run_cli("--store", url, "archive", str(src), "--name", "m")
    assert r.code == 2, (url, r.err)
    one_line_error(r)
    assert list(work.iterdir()) == [] and not home.exists()  # no "s3:" directory, no default store


def test_empty_store_flag_is_refused_not_the_default(home, src):
    r = run_cli("--store", "", "archive", str(src), "--name", "m")
    assert r.code == 2 and "--store is empty" in r.err
    assert not home.exists()


def test_archive_into_non_store_directory_is_refused(home, src, tmp_path):
    """A mistyped --store naming a directory of data must not turn it into a store."""
    data = tmp_path / "checkpoints"
    data.mkdir()
    (data / "weights.bin").write_bytes(b"precious")
    r = run_cli("--store", str(data), "archive", str(src), "--name", "m")
    assert r.code == 2 and "not empty and holds no archiver store" in r.err
    assert sorted(p.name for p in data.iterdir()) == ["weights.bin"]


def test_refused_sign_key_touches_no_store(home, src, tmp_path):
    r = run_cli("--store", str(tmp_path / "new"), "archive", str(src), "--name", "m", "--sign-key",
                str(tmp_path / "missing-key"))
    assert r.code == 2 and "no signing key" in r.err
    assert not (tmp_path / "new").exists()
