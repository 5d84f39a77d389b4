"""The resume journal: a driver killed after K of M files resumes them, same manifest id."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from archiver import api
from archiver.executors import InProcessExecutor
from archiver.journal import JOURNAL_DIR, Journal, journal_key
from tests.helpers import make_checkpoint, run_cli


class DyingDriver(InProcessExecutor):
    """Runs K file tasks, then the driver 'dies' (as a SIGINT would kill it) on the next."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.calls = 0

    def submit(self, fn, item):
        if self.calls == self.k:
            raise KeyboardInterrupt
        self.calls += 1
        return super().submit(fn, item)


def _source(tmp_path: Path) -> Path:
    src = make_checkpoint(tmp_path / "src", layers=2, dim=64)
    for i in range(4):
        (src / f"shard-{i}.bin").write_bytes(os.urandom(3000 + i))
    return src


def _journals(home: Path) -> list[Path]:
    return sorted((home / JOURNAL_DIR).glob("*.jsonl")) if (home / JOURNAL_DIR).exists() else []


def test_killed_driver_resumes_k_files_with_the_same_id(tmp_path, home):
    src = _source(tmp_path)
    clean = api.archive([src], name="m", store=str(tmp_path / "clean"))
    store = str(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        api.archive([src], name="m", store=store, executor=DyingDriver(3))
    assert api.list_archives(store=store) == []  # nothing committed
    [journal] = _journals(home)
    assert len(journal.read_text().splitlines()) == 3
    res = api.archive([src], name="m", store=store)
    assert res.resumed_files == 3 and res.id == clean.id
    assert _journals(home) == []  # removed once committed
    again = api.archive([src], name="m", store=store)
    assert again.resumed_files == 0  # a finished archive leaves nothing to resume


def test_a_file_changed_since_it_was_journalled_is_read_again(tmp_path, home):
    src = _source(tmp_path)
    store = str(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        api.archive([src], name="m", store=store, executor=DyingDriver(3))
    journalled = [json.loads(line)["path"] for line in _journals(home)[0].read_text().splitlines()]
    changed = src.parent / journalled[0]  # archive paths start with the directory archived
    changed.write_bytes(changed.read_bytes() + b"more")  # new size, mtime and ctime
    res = api.archive([src], name="m", store=store)
    assert res.resumed_files == 2
    m = api.show(res.id, store=store)[1]
    assert {e.path: e.size for e in m.files}[journalled[0]] == changed.stat().st_size


def test_a_journalled_file_whose_chunks_are_missing_is_archived_again(tmp_path, home):
    """A journal's word is not proof: a line whose chunks the store does not hold (a lifecycle
    rule, a wrong bucket) is not resumed; its file is read and stored again."""
    src = _source(tmp_path)
    clean = api.archive([src], name="m", store=str(tmp_path / "clean"))
    store = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        api.archive([src], name="m", store=str(store), executor=DyingDriver(2))
    for chunk in (store / "chunks").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
    r = run_cli("--store", str(store), "archive", str(src), "--name", "m", "--json")
    assert r.code == 0 and r.json()["resumed_files"] == 0 and r.json()["id"] == clean.id
    assert run_cli("--store", str(store), "verify", "m", "--deep").code == 0


@pytest.mark.packs
def test_a_journal_naming_chunks_of_a_pack_never_written_resumes_none_of_them(tmp_path, home, monkeypatch):
    """With packing on (the default), a small file is journalled when done, before the pack
    holding its chunk is written. If that write fails (or the run is killed first), the next
    run must not resume the file, or every later run would fail on the missing chunk."""
    from archiver.errors import StoreError
    from archiver.repository import Repository
    src = tmp_path / "src" / "many"
    src.mkdir(parents=True)
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(os.urandom(20_000 + i))
    clean = api.archive([src], name="m", store=str(tmp_path / "clean"))
    store = str(tmp_path / "store")
    real = Repository._write_pack

    def failing(self, *a, **k):
        raise StoreError("disk full (simulated)")
    monkeypatch.setattr(Repository, "_write_pack", failing)
    with pytest.raises(StoreError):
        api.archive([src], name="m", store=store)
    [journal] = _journals(home)
    assert len(journal.read_text().splitlines()) == 6  # every file journalled, no pack stored
    monkeypatch.setattr(Repository, "_write_pack", real)
    r = run_cli("--store", store, "archive", str(src), "--name", "m", "--json")
    assert r.code == 0, r.err
    assert r.json()["resumed_files"] == 0 and r.json()["id"] == clean.id
    assert _journals(home) == []
    dest = tmp_path / "dest"
    assert run_cli("--store", store, "restore", "m", str(dest)).code == 0
    assert all((dest / "many" / p.name).read_bytes() == p.read_bytes() for p in src.iterdir())


def test_cli_reports_resumed_files(tmp_path, home):
    src = _source(tmp_path)
    store = str(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        api.archive([src], name="m", store=store, executor=DyingDriver(1))
    r = run_cli("--store", store, "archive", str(src), "--name", "m", "--json")
    assert r.code == 0 and r.json()["resumed_files"] == 1


def test_journal_key_depends_on_the_inputs(tmp_path):
    a = journal_key("file:///s", "m", None, {}, [tmp_path / "a"])
    assert a == journal_key("file:///s", "m", None, {}, [tmp_path / "a"])
    assert a != journal_key("file:///s", "n", None, {}, [tmp_path / "a"])
    assert a != journal_key("file:///t", "m", None, {}, [tmp_path / "a"])
    assert a != journal_key("file:///s", "m", None, {}, [tmp_path / "b"])


def test_torn_last_line_is_ignored(tmp_path, home):
    src = _source(tmp_path)
    store = str(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        api.archive([src], name="m", store=store, executor=DyingDriver(2))
    [path] = _journals(home)
    with open(path, "ab") as f:
        f.write(b'{"path": "shard-0.bin", "snapsh')  # killed mid-line
    assert len(Journal(path).load()) == 2


@pytest.mark.parametrize("batch", [1, None])
def test_driver_kill9_after_k_files_resumes_them(tmp_path, home, batch):
    """A real kill -9 (tests/crashrunner.py) while the 4th of 6 files is being archived: with
    lines written out one at a time, the 3 finished files are resumed; with the default batch,
    whatever prefix was written out is resumed and the lost tail is archived again, same id."""
    import signal
    import subprocess
    import sys
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(os.urandom(10_000 * (i + 1)))  # one chunk each
    clean = api.archive([src], name="m", store=str(tmp_path / "clean"))
    store = str(tmp_path / "store")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "ARCHIVER_HOME": str(home), "CRASH_AT": "put:4", "PYTHONPATH": str(root),
           **({"JOURNAL_BATCH": str(batch)} if batch else {})}
    p = subprocess.run([sys.executable, "-m", "tests.crashrunner", "--store", store, "archive", str(src),
                        "--name", "m", "--max-inflight", "1", "--json"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    lines = sum(len(j.read_text().splitlines()) for j in _journals(home))
    if batch == 1:
        assert lines == 3  # files 1-3 came back before the 4th put
    else:
        assert lines <= 3  # at most the files finished; an unwritten batch is lost
    r = run_cli("--store", store, "archive", str(src), "--name", "m", "--json")
    assert r.code == 0 and r.json()["resumed_files"] == lines and r.json()["id"] == clean.id


def test_lines_are_written_out_a_batch_at_a_time(tmp_path):
    from manifests.model import Entry
    j = Journal(tmp_path / "j.jsonl", batch_lines=3)
    import hashlib

    import blake3
    entries = [Entry(path=f"f{i}", type="file", size=0, mode=0o644, mtime_ns=1, blake3=blake3.blake3(b"").hexdigest(),
                     sha256=hashlib.sha256(b"").hexdigest()) for i in range(5)]
    for e in entries[:2]:
        j.record(e, [1, 2, 0, 3, 4], sync=False)
    assert not j.path.exists() or j.path.read_bytes() == b""  # held in memory, no write per file
    j.record(entries[2], [1, 2, 0, 3, 4], sync=False)
    assert len(j.path.read_bytes().splitlines()) == 3  # a full batch: written out in one go
    j.record(entries[3], [1, 2, 0, 3, 4], sync=True)  # the caller's once-a-second sync writes it out
    assert len(j.path.read_bytes().splitlines()) == 4
    j.record(entries[4], [1, 2, 0, 3, 4], sync=False)
    j.close()  # a clean stop writes out the rest
    assert sorted(Journal(j.path).load()) == [e.path for e in entries]


def test_a_journal_whose_last_batch_was_lost_resumes_the_rest(tmp_path, home):
    """A killed driver loses the batch it had not written out: those files are archived again,
    the written ones are resumed, and the manifest is the one a clean run makes."""
    src = _source(tmp_path)
    clean = api.archive([src], name="m", store=str(tmp_path / "clean"))
    store = str(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        api.archive([src], name="m", store=store, executor=DyingDriver(4))
    [path] = _journals(home)
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4  # a clean stop (Ctrl-C) writes out everything it had
    path.write_bytes(b"".join(lines[:1]))  # as if killed with the last 3 lines still in memory
    res = api.archive([src], name="m", store=store)
    assert res.resumed_files == 1 and res.id == clean.id
    assert api.verify([res.id], store=store, deep=True).problems == []


def test_a_line_is_what_json_dumps_writes_and_loads_back_as_the_entry(tmp_path):
    """line_of lays out a small file's line by formatting: byte for byte json.dumps's line,
    for every entry it takes (escaped text included); others go through json.dumps."""
    from archiver.journal import line_of
    from manifests.model import ChunkRef, Entry
    h = "ab" * 32
    base = Entry(path="d/f.bin", type="file", mode=0o644, size=30, mtime_ns=1_700_000_000_123_456_789,
                 blake3=h, sha256="cd" * 32, format="", chunks=(ChunkRef(0, 10, h, 12, "zstd"),
                                                               ChunkRef(10, 20, "ef" * 32, 20, "raw")))
    odd = [
        base,
        Entry(path="e", type="file", mode=0o600, size=0, mtime_ns=-5, blake3=h, sha256=h),  # no chunks
        Entry(**{**base.__dict__, "path": 'q"\\ \u00e9\u2028/\U0001f600', "format": "safetensors"}),
        Entry(**{**base.__dict__, "chunks": (ChunkRef(0, 30, h, 31, 'z"\u00e9'),)}),
        Entry(**{**base.__dict__, "tech": {"tensors": 2, "dtype": {"bf16": 1.5}}}),  # json.dumps's
        Entry(path="m", type="file", mode=0o644, size=10, mtime_ns=1, blake3=h, sha256=h, filemap=h, chunk_count=129),
        Entry(**{**base.__dict__, "mode": True}),  # not an exact int: json.dumps's `true`
        Entry(**{**base.__dict__, "chunks": (ChunkRef(0, 30.0, h, 31, "zstd"),)}),
    ]
    snaps = [[2049, 12, 30, 1, 2], [1, 2, 3, 4, True], [1, 2, 3]]
    for e in odd:
        for snap in snaps:
            want = json.dumps({"path": e.path, "snapshot": snap, "entry": e.to_json()}).encode() + b"\n"
            assert line_of(e, snap) == want, (e, snap)
    j = Journal(tmp_path / "j.jsonl")
    j.record(base, [2049, 12, 30, 1, 2], sync=True)
    j.close()
    got = j.load()
    assert list(got) == [base.path] and got[base.path].entry == base and got[base.path].snapshot == [2049, 12, 30, 1, 2]


def test_lines_made_elsewhere_append_after_the_pending_ones_and_load_back(tmp_path):
    """record_lines: lines a worker process made with line_of are written after the lines
    still pending, and load back as the entries they were made from."""
    from archiver.journal import line_of
    from manifests.model import ChunkRef, Entry
    entries = [Entry(path=f"t/f{i}", type="file", mode=0o644, size=3, mtime_ns=i, blake3="b" * 64,
                     sha256="c" * 64, chunks=(ChunkRef(0, 3, "b" * 64, 13, "raw"),)) for i in range(3)]
    snaps = [[1, i, 3, i, i] for i in range(3)]
    j = Journal(tmp_path / "j.jsonl", batch_lines=100)
    j.record(entries[0], snaps[0], sync=False)  # pending, not written yet
    j.record_lines(line_of(entries[1], snaps[1]) + line_of(entries[2], snaps[2]), sync=True)
    assert [json.loads(x)["path"] for x in (tmp_path / "j.jsonl").read_bytes().splitlines()] == ["t/f0", "t/f1", "t/f2"]
    j.close()
    got = Journal(tmp_path / "j.jsonl").load()
    assert {p: (g.entry, g.snapshot) for p, g in got.items()} == {e.path: (e, s) for e, s in zip(entries, snaps)}


def test_small_line_is_line_of_byte_for_byte() -> None:
    """journal.small_line (a worker's line for a plain small file, made from its values) is
    `line_of` of the Entry those values make: one chunk or none, raw or zstd, odd paths."""
    from archiver.journal import line_of, small_line
    from manifests.model import ChunkRef, Entry
    for path, size, chunk in [("a/b.txt", 5, (5, "ab" * 32, 45, "raw")), ('q/"x"\\ é\u2028.bin', 9000, (9000, "cd" * 32, 120, "zstd")),
                              ("empty", 0, None)]:
        snap = [64768, 123456, size, 1_795_850_588_536_555_226, 1_795_850_588_536_555_999]
        e = Entry(path=path, type="file", mode=0o644, size=size, mtime_ns=snap[3], blake3="ef" * 32, sha256="01" * 32,
                  chunks=() if chunk is None else (ChunkRef(0, *chunk),))
        assert small_line(path, snap, 0o644, size, snap[3], "ef" * 32, "01" * 32, chunk) == line_of(e, snap)


@pytest.mark.parametrize("path", ["plain.txt", 'q/"x"\\y', "line\nbreak\ttab\rcr", "\x01\x7f ctl", "é/ß/東京.bin",
                                  "emoji/\U0001f600\U00010348.bin", "sep\u2028\u2029", "bad/\udcff\udc80.bin",
                                  "/", " lead and trail ", "x" * 300])
def test_small_line_is_json_dumps_for_any_path_and_loads_back(tmp_path, path: str) -> None:
    """`small_line` is byte for byte `line_of` and `json.dumps` (non-BMP characters as surrogate
    pairs, surrogate-escaped names, control characters, quotes, backslashes), for every chunk
    shape it takes; a journal of such lines loads back (where the manifest reader takes the
    path) as the entries those values make."""
    from archiver.journal import line_of, small_line
    from manifests.model import ChunkRef, Entry
    for size, chunk in [(0, None), (1, (1, "ab" * 32, 41, "raw")), (65536, (65536, "cd" * 32, 77, "zstd"))]:
        snap = [2**63 - 1, 0, size, -1_000_000_007, 2**40]  # a big dev, inode 0, an mtime before 1970
        e = Entry(path=path, type="file", mode=0o100644, size=size, mtime_ns=snap[3], blake3="ef" * 32,
                  sha256="01" * 32, chunks=() if chunk is None else (ChunkRef(0, *chunk),))
        line = small_line(path, snap, 0o100644, size, snap[3], "ef" * 32, "01" * 32, chunk)
        assert line == line_of(e, snap) == json.dumps({"path": path, "snapshot": snap, "entry": e.to_json()}).encode() + b"\n"
        j = Journal(tmp_path / f"{size}.jsonl")
        j.record_lines(line)
        j.close()
        from manifests.model import Manifest, canonical, parse_manifest
        try:
            shell = Manifest(name="journal", entries=()).to_dict()
            shell["entries"] = [e.to_json()]
            parse_manifest(canonical(shell))
        except Exception:  # noqa: BLE001 - a path the manifest reader refuses is not resumed
            assert Journal(tmp_path / f"{size}.jsonl").load() == {}
            continue
        got = Journal(tmp_path / f"{size}.jsonl").load()
        assert {p: (g.entry, g.snapshot) for p, g in got.items()} == {path: (e, snap)}
