"""The event log in the store (issue 10): every archive, verify, restore and repair appends
one immutable, hash-chained event; concurrent writers never overwrite each other; a
rebuilt catalog has the same fixity history; a deleted, altered or badly signed event is
reported by verify; the log exports as PREMIS 3."""
from __future__ import annotations

import json
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import blake3
import pytest

import archiver
from archiver import events, layout
from archiver.events import Event, ManifestOutcome
from archiver.repository import Repository
from archiver.settings import Settings
from manifests import signing
from tests.helpers import RawStore, make_checkpoint, run_cli


LOCAL = pytest.mark.parametrize("store_url", ["local"], indirect=True)  # the rest are store-agnostic


@pytest.fixture
def env(tmp_path, monkeypatch, store_url):
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    src = make_checkpoint(tmp_path / "src" / "ckpt", layers=2, dim=64)
    cat = tmp_path / "cat.db"
    return store_url, cat, src, ["--store", store_url, "--catalog", str(cat)]


def event_keys(raw: RawStore) -> list[str]:
    return [k for k in raw.keys("events/") if layout.parse_event_key(k) is not None]


def snapshot(store: str, cat: Path, now: float) -> dict:
    """Everything the fixity history consists of, as the catalog reports it."""
    with archiver.open_repository(store, cat, read_only=True) as repo:
        audit = [(a.at, a.event, a.manifest_id, a.ok, a.details) for a in repo.audit_log() if a.event != "rebuild"]
        return {"status": archiver.fixity_status(90 * 86400, repo=repo, now=now).to_dict(), "audit": audit,
                "coverage": sorted(repo.chunk_coverage()),
                "times": {r.id: r.recorded_at for r in repo.list_archives()}}


@LOCAL
def test_each_command_appends_one_chained_event(env):
    store, cat, src, base = env
    mid = run_cli(*base, "archive", str(src), "--name", "m", "--json").json()["id"]
    for extra in ([], ["--deep"], ["--sample", "0.5"]):
        assert run_cli(*base, "verify", "m", *extra).code == 0
    assert run_cli(*base, "restore", "m", str(src.parent.parent / "out")).code == 0
    raw = RawStore(store)
    keys = event_keys(raw)
    assert len(keys) == 5 and len({layout.parse_event_key(k)[0] for k in keys}) == 1  # one writer
    recs, prev = [], None
    for seq, key in enumerate(keys):  # LIST order is sequence order
        data = raw.read(key)
        rec = events.parse(data, key)
        assert rec.seq == seq and rec.prev == prev and key.endswith(f"{seq:012d}-{(prev or '0' * 64)[:16]}.json")
        assert data == events.canonical(json.loads(data)) + b"\n"  # canonical JSON
        assert rec.rfc3339.endswith("Z") and events.format_time(events.parse_time(rec.rfc3339)) == rec.rfc3339
        assert rec.event.agent.tool.startswith("archiver") and rec.event.agent.host and rec.event.agent.user
        assert rec.event.manifest_ids == [mid] and rec.event.ok
        prev = blake3.blake3(data).hexdigest()
        recs.append(rec)
    assert [(r.event.type, r.event.details.get("mode")) for r in recs] == [
        ("ingestion", None), ("fixity check", "shallow"), ("fixity check", "deep"), ("fixity check", "sample:0.5"),
        ("dissemination", None)]
    assert recs[1].chunk_count == 0 and recs[2].chunk_count == len(recs[2].event.chunks_ok) > 0
    # the catalog's audit log holds the same history, at the events' own times
    with archiver.open_repository(store, cat, read_only=True) as repo:
        audit = repo.audit_log()
    assert [(a.event, a.at) for a in audit] == [(events.AUDIT_NAMES[r.event.type], r.event.time) for r in recs]
    assert audit[2].details == {"mode": "deep", "problems": 0, "first": [], "manifest": mid}


@LOCAL
def test_large_checks_go_to_a_digest_list(env, monkeypatch):
    store, cat, src, base = env
    monkeypatch.setattr(events, "INLINE_CHUNKS", 1)
    run_cli(*base, "archive", str(src), "--name", "m")
    assert run_cli(*base, "verify", "m", "--deep").code == 0
    raw = RawStore(store)
    (list_key,) = [k for k in raw.keys("events/") if layout.is_event_list_key(k)]
    data = raw.read(list_key)
    h = blake3.blake3(data).hexdigest()
    assert list_key == layout.event_list(layout.parse_event_key(event_keys(raw)[0])[0], h)
    rec = events.parse(raw.read(event_keys(raw)[-1]))
    assert rec.chunk_list == h and rec.event.chunks_ok == () and rec.chunk_count > 1
    with archiver.open_repository(store, cat, read_only=True) as repo:
        log = repo.read_events()
    assert not log.problems and len(log.records[-1].event.chunks_ok) == rec.chunk_count
    raw.write(list_key, data.replace(b'"ok":["', b'"ok":["0', 1)[:-1] + b"x")  # a rotted digest list
    assert run_cli(*base, "verify", "m").code == 0  # a daily verify only sees that it is there...
    r = run_cli(*base, "verify", "m", "--deep")  # ...a deep one re-hashes it
    assert r.code == 1 and "event:" in r.out and "does not match its hash" in r.out
    raw.delete(list_key)
    r = run_cli(*base, "verify", "m")
    assert r.code == 1 and f"its digest list {h[:16]} is missing from the store" in r.out


def test_concurrent_writers_never_overwrite_each_others_events(tmp_path):
    """Two processes' worth of repositories on one catalog (one writer id) and one on
    another catalog append at once: every event lands, each chain stays unbroken."""
    store = str(tmp_path / "store")
    settings = [Settings.resolve(store, tmp_path / name) for name in ("a.db", "a.db", "b.db")]
    repos = [Repository.open(s, create=True) for s in settings]
    barrier = threading.Barrier(len(repos))

    def work(repo: Repository, n: int) -> None:
        barrier.wait()
        for i in range(15):
            done = repo.append_event(Event(events.FIXITY_CHECK, details={"mode": "shallow", "i": i, "n": n}))
            assert done.record is not None and done.store_error is None

    threads = [threading.Thread(target=work, args=(r, n)) for n, r in enumerate(repos)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    log = repos[0].read_events()
    assert not log.problems
    assert len(log.records) == 45
    assert sorted((r.event.details["n"], r.event.details["i"]) for r in log.records) == \
        sorted((n, i) for n in range(3) for i in range(15))
    writers = {r.writer for r in log.records}
    assert len(writers) == 2 and repos[0].event_writer() == repos[1].event_writer() != repos[2].event_writer()
    for r in repos:
        r.close()


@pytest.mark.parametrize("store_url", ["local", "s3-mock", pytest.param("s3-server", marks=pytest.mark.integration)],
                         indirect=True)
def test_rebuild_restores_the_same_fixity_history(env, tmp_path):
    """Delete the catalog, rebuild it from the store: `fixity status`, per-chunk check
    times, the audit log and each archive's recorded time are exactly as before."""
    store, cat, src, base = env
    a = run_cli(*base, "archive", str(src), "--name", "a", "--json").json()["id"]
    b = run_cli(*base, "archive", str(src / "tokenizer"), "--name", "b", "--json").json()["id"]
    extra = tmp_path / "extra.bin"
    extra.write_bytes(blake3.blake3(b"x").digest(length=5000))
    run_cli(*base, "archive", str(extra), "--name", "never-verified")
    assert run_cli(*base, "verify", "a", "--deep").code == 0
    assert run_cli(*base, "verify", "b", "--sample", "1", "--max-bytes", "1").code == 0
    raw = RawStore(store)
    manifest = archiver.show(a, store=store, catalog=cat)[1]
    victim = max((c for e in manifest.files for c in e.chunks), key=lambda c: c.length)
    raw.mutate(layout.chunk(victim.hash), lambda d: d[:-1] + bytes([d[-1] ^ 1]))
    assert run_cli(*base, "verify", "a", "--deep").code == 1  # found damaged...
    run_cli(*base, "archive", str(src), "--name", "a2")  # ...and repaired from the source
    assert run_cli(*base, "restore", "b", str(tmp_path / "out")).code == 0
    now = time.time() + 60
    before = snapshot(store, cat, now)
    assert [x[1] for x in before["audit"]].count("repair") == 1
    assert before["status"]["overall"]["failed"] == [] and before["status"]["overall"]["never_checked"] > 0
    assert all(t is not None for t in before["times"].values())
    for f in tmp_path.glob("cat.db*"):
        f.unlink()
    r = run_cli(*base, "catalog", "rebuild", "--json")
    assert r.code == 0 and r.json()["events"] == len(event_keys(raw))
    after = snapshot(store, cat, now)
    assert after == before
    assert run_cli(*base, "catalog", "rebuild", "--json").json()["events"] == 0  # a replay never repeats
    assert snapshot(store, cat, now) == before
    assert b in before["times"]


@LOCAL
def test_verify_reports_deleted_and_altered_events(env):
    store, cat, src, base = env
    run_cli(*base, "archive", str(src), "--name", "m")
    for _ in range(4):
        assert run_cli(*base, "verify", "m").code == 0
    raw = RawStore(store)
    keys = event_keys(raw)  # 0..4

    original = raw.read(keys[2])
    raw.delete(keys[2])  # a gap in the chain
    r = run_cli(*base, "verify", "m", "--json")
    assert r.code == 1
    (p,) = [p for p in r.json()["problems"] if p["kind"] == "event" and "missing" in p["detail"]
            and p["path"] == keys[3]]
    assert "events 2..2" in p["detail"]
    raw.write(keys[2], original)
    assert run_cli(*base, "verify", "m").code == 0  # whole again (this run appends event 6)

    rec = json.loads(raw.read(keys[1]))
    rec["outcome"] = "failure"  # history rewritten: still a well-formed event
    raw.write(keys[1], events.canonical(rec) + b"\n")
    r = run_cli(*base, "verify", "m", "--json")
    details = [(p["path"], p["detail"]) for p in r.json()["problems"] if p["kind"] == "event"]
    assert r.code == 1 and (keys[2], "its prev is not the hash of event 1 (that event was altered or replaced)") \
        in details
    assert any(k == keys[1] and "differs from the one this catalog recorded" in d for k, d in details)

    raw.write(keys[3], b"{not json")
    details = [p["detail"] for p in run_cli(*base, "verify", "m", "--json").json()["problems"]]
    assert any(d.startswith("unreadable event") for d in details)

    head = event_keys(raw)[-1]  # the newest event: no successor names it, the catalog does
    raw.delete(head)
    r = run_cli(*base, "verify", "m", "--json")
    assert any(p["path"] == head and "missing from the store" in p["detail"] for p in r.json()["problems"])
    assert "event: " in run_cli(*base, "verify", "m").out  # a human line without a manifest


@LOCAL
def test_signed_events_and_a_forged_signature(env, tmp_path):
    store, cat, src, base = env
    key = tmp_path / "k"
    assert run_cli("keygen", str(key)).code == 0
    run_cli(*base, "archive", str(src), "--name", "m", "--sign-key", str(key))
    assert run_cli(*base, "verify", "m", "--sign-key", str(key)).code == 0
    raw = RawStore(store)
    keys = event_keys(raw)
    for k in keys:
        data = raw.read(k)
        assert events.signature_ok(data) is True
        fp = json.loads(data)["signature"]["fingerprint"]
    assert fp == signing.fingerprint(signing.load_public(f"{key}.pub"))
    rec = json.loads(raw.read(keys[-1]))
    rec["problem_count"] = 7  # altered after signing; the head, so no successor's prev can tell
    forged = events.canonical(rec) + b"\n"
    assert events.signature_ok(forged) is False
    raw.write(keys[-1], forged)
    r = run_cli(*base, "verify", "m", "--json")
    assert r.code == 1 and any(p["kind"] == "event" and p["detail"] == "bad signature" for p in r.json()["problems"])


def test_append_event_is_the_api_for_other_rooms(tmp_path):
    """Replication and retention (other issues) record their events with the same call;
    a rebuild turns them into audit rows."""
    store, cat = str(tmp_path / "store"), tmp_path / "c.db"
    with Repository.open(Settings.resolve(store, cat), create=True) as repo:
        mid = "ab" * 32
        done = repo.append_event(Event(events.POLICY_ASSIGNMENT, manifests=(ManifestOutcome(mid),),
                                       details={"retain_until": "2030-01-01T00:00:00Z"}))
        assert done.record.key == layout.event(repo.event_writer(), events.name(0, None))
        (row,) = repo.audit_log()
    assert row.event == "retention" and row.details["retain_until"] == "2030-01-01T00:00:00Z"
    with pytest.raises(ValueError):
        Event("made up")


@LOCAL
def test_events_command_json_filters_and_premis(env):
    store, cat, src, base = env
    a = run_cli(*base, "archive", str(src), "--name", "a", "--json").json()["id"]
    b = run_cli(*base, "archive", str(src / "tokenizer"), "--name", "b", "--json").json()["id"]
    assert run_cli(*base, "verify", "--all", "--deep").code == 0
    d = run_cli(*base, "events", "--json").json()
    assert d["ok"] and [e["type"] for e in d["events"]] == ["ingestion", "ingestion", "fixity check"]
    assert [e["type"] for e in run_cli(*base, "events", "b", "--json").json()["events"]] == [
        "ingestion", "fixity check"]
    assert run_cli(*base, "events", "--since", "2999-01-01", "--json").json()["events"] == []
    assert len(run_cli(*base, "events", "--since", "1d", "--json").json()["events"]) == 3
    assert run_cli(*base, "events", "--since", "yesterday").code == 2
    log = archiver.event_log(b, store=store, catalog=cat)  # the same through the Python API
    assert not log.problems and [r.event.type for r in log.records] == ["ingestion", "fixity check"]
    assert archiver.event_log(since=log.records[-1].event.time, store=store, catalog=cat).records == log.records[-1:]
    human = run_cli(*base, "events")
    assert human.code == 0 and len(human.out.splitlines()) == 3 and "fixity check deep" in human.out

    x = run_cli(*base, "events", "--premis")
    assert x.code == 0
    root = ET.fromstring(x.out.encode())
    ns = {"p": events.PREMIS_NS}
    assert root.tag == f"{{{events.PREMIS_NS}}}premis" and root.get("version") == "3.0"
    objs = [o.findtext("p:objectIdentifier/p:objectIdentifierValue", namespaces=ns)
            for o in root.findall("p:object", ns)]
    assert sorted(objs) == sorted([a, b])
    evs = root.findall("p:event", ns)
    assert [e.findtext("p:eventType", namespaces=ns) for e in evs] == ["ingestion", "ingestion", "fixity check"]
    for e in evs:
        assert e.findtext("p:eventIdentifier/p:eventIdentifierType", namespaces=ns) == "archiver event"
        assert e.findtext("p:eventIdentifier/p:eventIdentifierValue", namespaces=ns).startswith(store)
        assert e.findtext("p:eventDateTime", namespaces=ns).endswith("Z")
        assert e.findtext("p:eventOutcomeInformation/p:eventOutcome", namespaces=ns) == "success"
        agent = e.findtext("p:linkingAgentIdentifier/p:linkingAgentIdentifierValue", namespaces=ns)
        assert agent in [g.findtext("p:agentIdentifier/p:agentIdentifierValue", namespaces=ns)
                         for g in root.findall("p:agent", ns)]
    linked = [v.text for v in evs[2].findall("p:linkingObjectIdentifier/p:linkingObjectIdentifierValue", ns)]
    assert sorted(linked) == sorted([a, b])
    # the order PREMIS 3 requires: objects, then events, then agents
    tags = [c.tag.split("}")[1] for c in root]
    assert tags == sorted(tags, key=["object", "event", "agent"].index)


def test_event_times_read_without_strptime_are_the_same_instants():
    """parse_time reads format_time's form field by field; every time it gave before (strptime)
    it gives now, other forms strptime takes still parse, and bad ones are still refused."""
    import datetime
    import random

    def by_strptime(s: str) -> float:
        return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()

    rnd = random.Random(7)
    for t in [0.0, 1.5, 1e9 + 0.1234565, 253402300798.999999] + [rnd.uniform(0, 4e9) for _ in range(2000)]:
        s = events.format_time(t)
        assert events.parse_time(s) == by_strptime(s)
        assert events.stamp(t) == by_strptime(s)
    assert events.parse_time("2026-1-2T3:4:5.6Z") == by_strptime("2026-1-2T3:4:5.6Z")  # strptime's leniency kept
    for bad in ("2026-13-01T00:00:00.000000Z", "2026-02-30T00:00:00.000000Z", "2026-01-01T00:00:00.000000Z\n",
                "2026-01-01 00:00:00.000000Z", "x", None, 5):
        with pytest.raises(events.EventFormatError):
            events.parse_time(bad)  # type: ignore[arg-type]


def test_digest_list_hashes_are_checked_whole():
    good = ["a" * 64, "b" * 64]
    data = events.encode_list(good, ["c" * 64])
    assert events.parse_list(data, blake3.blake3(data).hexdigest()) == (tuple(good), ("c" * 64,))
    for bad in (["a" * 63], [1], [None], ["a" * 64, ["b" * 64]], "a" * 64, {"a" * 64: 1}):
        data = json.dumps({"failed": [], "format": events.LIST_FORMAT, "ok": bad}).encode()
        with pytest.raises(events.EventFormatError, match="malformed digest list"):
            events.parse_list(data, blake3.blake3(data).hexdigest())


def test_agent_version_is_read_from_the_installed_metadata(tmp_path):
    """The version comes from the first archiver-*.dist-info on the path, as importlib.metadata
    finds it, without importing importlib.metadata; anything else is left to it."""
    from importlib.metadata import version
    try:
        installed = version("archiver")
    except Exception:
        installed = None
    if installed is not None:
        assert events._version() == installed
    first, second = tmp_path / "a", tmp_path / "b"
    for d, v in ((first, "1.2.3"), (second, "9.9.9")):
        (d / f"archiver-{v}.dist-info").mkdir(parents=True)
        (d / f"archiver-{v}.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: archiver\n"
                                                                f"Version: {v}\n\nVersion: 0\n")
    (tmp_path / "c" / "archiver-2.0.dist-info").mkdir(parents=True)  # no METADATA: left to importlib.metadata
    assert events._dist_info_version([str(tmp_path / "none"), str(first), str(second)]) == "1.2.3"
    assert events._dist_info_version([str(second), str(first)]) == "9.9.9"
    assert events._dist_info_version([str(tmp_path / "c"), str(first)]) is None
    assert events._dist_info_version([str(tmp_path / "none")]) is None


@LOCAL
def test_a_digest_list_shared_by_many_runs_is_read_once_per_read(env, monkeypatch):
    """Deep verifies that prove the same chunks write the same digest list (content-addressed):
    reading the log fetches and re-hashes it once, gives every event its chunks, and a rotted
    list is still reported for every event that names it."""
    store, cat, src, base = env
    monkeypatch.setattr(events, "INLINE_CHUNKS", 1)
    run_cli(*base, "archive", str(src), "--name", "m")
    for _ in range(3):
        assert run_cli(*base, "verify", "m", "--deep").code == 0
    raw = RawStore(store)
    (list_key,) = [k for k in raw.keys("events/") if layout.is_event_list_key(k)]
    with archiver.open_repository(store, cat, read_only=True) as repo:
        gets: list[str] = []
        real_get = repo._store.get
        monkeypatch.setattr(repo._store, "get", lambda key, **kw: gets.append(key) or real_get(key, **kw))
        log = repo.read_events()
    named = [r for r in log.records if r.chunk_list is not None]
    assert not log.problems and len(named) == 3 and gets.count(list_key) == 1
    assert all(r.event.chunks_ok and r.event.chunks_ok == named[0].event.chunks_ok for r in named)
    data = raw.read(list_key)
    raw.write(list_key, data[:-1] + b"x")  # rotted
    with archiver.open_repository(store, cat, read_only=True) as repo:
        log = repo.read_events()
    bad = [p for p in log.problems if "does not match its hash" in p.detail]
    assert sorted(p.path for p in bad) == sorted(r.key for r in named)


@pytest.mark.parametrize("earlier", ["zip", "egg-info", "egg"])
def test_agent_version_is_not_taken_from_past_an_entry_importlib_metadata_reads_first(tmp_path, earlier):
    """The running archiver's metadata in a zip (zipapp, pex, shiv), an egg or an egg-info (a
    legacy develop install) earlier on the path is what importlib.metadata finds; the fast reader
    must defer to it, not skip that entry and take an older archiver's dist-info further on
    (events were attributed to the wrong agent version)."""
    import zipfile
    from importlib.metadata import distributions
    meta = "Metadata-Version: 2.1\nName: archiver\nVersion: 7.7.7\n\n"
    if earlier == "zip":
        first = tmp_path / "app.zip"
        with zipfile.ZipFile(first, "w") as z:
            z.writestr("archiver-7.7.7.dist-info/METADATA", meta)
    elif earlier == "egg":
        first = tmp_path / "archiver-7.7.7-py3.11.egg"
        (first / "EGG-INFO").mkdir(parents=True)
        (first / "EGG-INFO" / "PKG-INFO").write_text(meta)
    else:
        first = tmp_path / "src"
        (first / "archiver.egg-info").mkdir(parents=True)
        (first / "archiver.egg-info" / "PKG-INFO").write_text(meta)
    old = tmp_path / "site"
    (old / "archiver-0.0.1.dist-info").mkdir(parents=True)
    (old / "archiver-0.0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: archiver\n"
                                                               "Version: 0.0.1\n\n")
    paths = [str(first), str(old)]
    assert next(iter(distributions(name="archiver", path=paths))).version == "7.7.7"
    assert events._dist_info_version(paths) in (None, "7.7.7")


@pytest.mark.parametrize("piece", [None, 7])
def test_an_events_chunk_lists_are_recorded_as_its_chunk_results_rows(tmp_path, monkeypatch, piece):
    """record_event_lists (one statement per list, or per slice of one: piece) leaves the
    catalog's chunk checks exactly as record_event of events.chunk_results does: new rows, a
    newer check kept over an older event's, a chunk in both lists damaged; and a replayed
    event is not recorded twice."""
    from manifests import jsonrows
    from manifests.catalog import Catalog
    if piece is not None:
        monkeypatch.setattr(jsonrows, "SLICE", piece)
    ok = [blake3.blake3(bytes([i])).hexdigest() for i in range(40)]
    failed = [ok[3], blake3.blake3(b"bad").hexdigest()]
    newer = ok[7]
    tables = []
    for way in ("rows", "lists"):
        cat = Catalog(tmp_path / f"{way}.db", "file:///tmp/archiver-test-store")
        cat.mark_verified([(newer, False)], at=2000.0)  # checked after the event: stays so
        cat.mark_verified([(ok[9], False)], at=500.0)  # checked before it: the event's result wins
        ev = Event(events.FIXITY_CHECK, ok=False, chunks_ok=tuple(ok), chunks_failed=tuple(failed))
        rows = events.audit_rows(ev)
        if way == "rows":
            first = cat.record_event("events/w/1", "w", 1, "h", 1000.0, rows, events.chunk_results(ev))
            again = cat.record_event("events/w/1", "w", 1, "h", 3000.0, rows, events.chunk_results(ev))
        else:
            first = cat.record_event_lists("events/w/1", "w", 1, "h", 1000.0, rows, ev.chunks_ok, ev.chunks_failed)
            again = cat.record_event_lists("events/w/1", "w", 1, "h", 3000.0, rows, ev.chunks_ok, ev.chunks_failed)
        assert (first, again) == (True, False)
        got = cat.chunk_checks(ok + failed)
        tables.append((got, [(a.event, a.ok) for a in cat.audit_log()]))
        cat.close()
    assert tables[0] == tables[1]
    got = tables[1][0]
    assert len(got) == 41
    assert got[newer] == (2000.0, False) and got[ok[9]] == (1000.0, True)
    assert got[ok[3]] == (1000.0, False) and got[failed[1]] == (1000.0, False) and got[ok[0]] == (1000.0, True)
