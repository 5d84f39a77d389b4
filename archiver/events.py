"""The event log's record format: one immutable object per preservation event.

Why: the catalog is rebuildable, so anything that lives only there (when an archive was
made, which chunks a verify proved intact and when) would be lost by `catalog rebuild`.
Each archive, verify, restore, repair (and, from other rooms, replication and retention
change) is therefore also written to the store as canonical JSON under
`events/<writer>/<seq>-<prev16>.json`, never overwritten. Events of one writer form a hash
chain (`prev` is the BLAKE3 of the previous event object's bytes), so a deleted or altered
event is detectable. Types are PREMIS 3 eventType terms, so the log exports as PREMIS.

This module is pure: it builds, encodes, parses and exports records; the repository
writes and reads them."""
from __future__ import annotations

import functools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import blake3

# PREMIS 3 eventType vocabulary terms (id.loc.gov/vocabulary/preservation/eventType).
INGESTION = "ingestion"              # archive
FIXITY_CHECK = "fixity check"        # verify, every mode
REPLICATION = "replication"          # copy to another store (issue 8)
RECOVERY = "recovery"                # repair of a damaged object
POLICY_ASSIGNMENT = "policy assignment"  # retention set or extended (issue 9)
DISSEMINATION = "dissemination"      # restore
EVENT_TYPES = (INGESTION, FIXITY_CHECK, REPLICATION, RECOVERY, POLICY_ASSIGNMENT, DISSEMINATION)

# The catalog's audit-log name for each type (rebuild replays events into these rows).
AUDIT_NAMES = {INGESTION: "archive", FIXITY_CHECK: "verify", REPLICATION: "replicate", RECOVERY: "repair",
               POLICY_ASSIGNMENT: "retention", DISSEMINATION: "restore"}

SUCCESS, FAILURE = "success", "failure"
FORMAT, VERSION = "archiver-event", 1
LIST_FORMAT = "archiver-event-chunks"
SIGN_DOMAIN = b"archiver-event-v1:"
# More chunk hashes than this go to a separate digest-list object, referenced by hash.
INLINE_CHUNKS = 64
FIRST_PROBLEMS = 20
MAX_EVENT_BYTES = 1 << 20         # an event object is a few KiB; larger is not one
MAX_LIST_BYTES = 256 << 20        # ~3.8 million hashes
GENESIS = "0" * 64                # what the first event of a writer follows (in its key only)


class EventFormatError(ValueError):
    """An object under events/ that is not a well-formed event (or digest list)."""


@functools.cache  # the installed package's version, once per process: importlib.metadata is slow to load
def _version() -> str:
    found = _dist_info_version(sys.path)
    if found is not None:
        return found
    try:
        from importlib.metadata import version
        return version("archiver")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


def _dist_info_version(paths: Iterable[str]) -> str | None:
    """The `Version:` of the archiver metadata importlib.metadata finds first on `paths`
    (`archiver-*.dist-info/METADATA` of a plain install, `archiver.egg-info/PKG-INFO` of a
    legacy develop install or a source checkout), without importing importlib.metadata and
    its email parser (~13 ms of every verify or restore); None where importlib.metadata must
    decide (a zip such as a zipapp or pex, an egg, two archiver metadata in one directory, a
    dist-info named without a version), which the caller then asks."""
    for p in paths:
        try:
            names = os.listdir(p or ".")
        except OSError:
            if os.path.exists(p or "."):
                return None  # a zip (zipapp, pex) importlib.metadata reads first: it may hold the running archiver
            continue
        if (p or ".").rstrip("/\\").lower().endswith(".egg"):
            return None  # a directory egg
        infos = [n for n in names if _is_archiver_info(n)]
        if not infos:
            continue
        if len(infos) > 1:
            return None  # which of them importlib.metadata takes is its own order
        name, where = infos[0].lower(), os.path.join(p or ".", infos[0])
        if name.endswith(".dist-info") and name.startswith("archiver-"):
            meta = os.path.join(where, "METADATA")
        elif name.endswith(".egg-info"):
            meta = os.path.join(where, "PKG-INFO") if os.path.isdir(where) else where
        else:
            return None  # an .egg file, or a dist-info named without a version
        try:
            with open(meta, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        break  # end of the headers
                    if line.startswith("Version:"):
                        return line[len("Version:"):].strip() or None
        except OSError:
            return None
        return None
    return None


def _is_archiver_info(name: str) -> bool:
    """Whether directory entry `name` is metadata importlib.metadata takes for `archiver`:
    its name part (before the first '-'), normalized, of a .dist-info, .egg-info or .egg."""
    low = name.lower()
    if not low.endswith((".dist-info", ".egg-info", ".egg")):
        return False
    return re.sub(r"[-_.]+", "_", low.rpartition(".")[0].partition("-")[0]) == "archiver"


@dataclass(frozen=True)
class Agent:
    """Who acted: the tool and its version, the host, the OS user."""

    tool: str
    host: str
    user: str

    @classmethod
    def current(cls) -> "Agent":
        # imported here, not with the module: getpass leaves every command's serial start (archive
        # looks its agent up on a thread beside the chunk work); the catalog imports socket anyway
        import getpass
        import socket
        try:
            user = getpass.getuser()
        except Exception:  # no passwd entry in a container
            user = str(os.getuid())
        return cls(f"archiver {_version()}", socket.gethostname(), user)

    def to_dict(self) -> dict[str, str]:
        return {"host": self.host, "tool": self.tool, "user": self.user}


@dataclass(frozen=True)
class ManifestOutcome:
    """The outcome of an event for one manifest (a verify of three archives has three)."""

    id: str
    ok: bool = True
    problems: int = 0
    first: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"first": list(self.first), "id": self.id, "outcome": SUCCESS if self.ok else FAILURE,
                "problems": self.problems}


def format_time(t: float) -> str:
    """RFC 3339 UTC with microseconds: 2026-11-28T00:10:00.123456Z."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_RFC3339_US = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.([0-9]{6})Z")


def parse_time(s: str) -> float:
    """`format_time`'s form (every event's) is read field by field: strptime, which takes the
    rest it accepts, costs ~20x more per call and ~10 ms to import."""
    try:
        m = _RFC3339_US.fullmatch(s) if isinstance(s, str) else None
        if m is not None:
            return datetime(*map(int, m.groups()), tzinfo=timezone.utc).timestamp()
        return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        raise EventFormatError(f"time {s!r} is not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SS.ffffffZ)") from None


def stamp(t: float | None = None) -> float:
    """A time as the event log stores it (microseconds): the catalog records exactly this
    float, so a rebuild that parses the event back writes the very same value."""
    import time
    return parse_time(format_time(time.time() if t is None else t))


@dataclass(frozen=True)
class Event:
    """What a room reports to `Repository.append_event`: the repository adds the writer,
    sequence number, `prev` and (optionally) a signature when it writes it."""

    type: str
    ok: bool = True
    manifests: tuple[ManifestOutcome, ...] = ()
    chunks_ok: tuple[str, ...] = ()        # chunks proved intact (deep-read, or repaired from proved bytes)
    chunks_failed: tuple[str, ...] = ()    # chunks found damaged or missing
    problems: tuple[str, ...] = ()         # the first FIRST_PROBLEMS problem lines
    problem_count: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=stamp)
    agent: Agent = field(default_factory=Agent.current)

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}")

    @property
    def manifest_ids(self) -> list[str]:
        return [m.id for m in self.manifests]


@dataclass(frozen=True)
class EventRecord:
    """An event as stored: the Event plus its place in its writer's chain."""

    event: Event
    writer: str
    seq: int
    prev: str | None
    chunk_list: str | None = None   # hash of the digest-list object, when the chunks are not inline
    chunk_count: int = 0
    signature: dict[str, str] | None = None
    key: str = ""
    hash: str = ""                  # BLAKE3 of the stored bytes (what the next event's prev names)

    @property
    def rfc3339(self) -> str:
        return format_time(self.event.time)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document `archiver events --json` prints for this event."""
        e = self.event
        return {"key": self.key, "hash": self.hash, "writer": self.writer, "seq": self.seq, "prev": self.prev,
                "type": e.type, "time": self.rfc3339, "outcome": SUCCESS if e.ok else FAILURE,
                "agent": e.agent.to_dict(), "manifests": [m.to_dict() for m in e.manifests],
                "chunks_ok": len(e.chunks_ok),
                "chunks_failed": list(e.chunks_failed), "chunk_list": self.chunk_list,
                "chunk_count": self.chunk_count, "problem_count": e.problem_count,
                "problems": list(e.problems), "details": e.details,
                "signed_by": None if self.signature is None else self.signature.get("fingerprint")}


def name(seq: int, prev: str | None) -> str:
    """The object name within the writer's prefix: zero-padded sequence (LIST order is
    time order) and the first 16 hex digits of `prev`, so two writers that saw the same
    head aim at the same key and put_if_absent lets only one of them have it."""
    return f"{seq:012d}-{(prev or GENESIS)[:16]}"


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def encode_list(ok: Iterable[str], failed: Iterable[str]) -> bytes:
    """A digest-list object: the chunks an event checked, when too many to inline."""
    return canonical({"failed": sorted(failed), "format": LIST_FORMAT, "ok": sorted(ok)})


def parse_list(data: bytes, expected_hash: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if blake3.blake3(data).hexdigest() != expected_hash:
        raise EventFormatError(f"digest list does not match its hash {expected_hash[:16]}")
    try:
        obj = json.loads(data)
        if obj.get("format") != LIST_FORMAT:
            raise ValueError("not a digest list")
        return tuple(_hashes(obj["ok"])), tuple(_hashes(obj["failed"]))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise EventFormatError(f"malformed digest list: {e}") from None


def needs_list(event: Event) -> bool:
    return len(event.chunks_ok) + len(event.chunks_failed) > INLINE_CHUNKS


def body(event: Event, writer: str, seq: int, prev: str | None, chunk_list: str | None) -> dict[str, Any]:
    """The unsigned record as a dict (canonical JSON of it is what a signature covers)."""
    if chunk_list is None:
        chunks: dict[str, Any] = {"failed": sorted(event.chunks_failed), "ok": sorted(event.chunks_ok)}
    else:
        chunks = {"count": len(event.chunks_ok) + len(event.chunks_failed), "failed": len(event.chunks_failed),
                  "list": chunk_list}
    return {"agent": event.agent.to_dict(), "chunks": chunks, "details": event.details, "format": FORMAT,
            "manifests": [m.to_dict() for m in event.manifests], "outcome": SUCCESS if event.ok else FAILURE,
            "prev": prev, "problem_count": event.problem_count, "problems": list(event.problems), "seq": seq,
            "time": format_time(event.time), "type": event.type, "version": VERSION, "writer": writer}


def signed_message(unsigned: bytes) -> bytes:
    return SIGN_DOMAIN + blake3.blake3(unsigned).hexdigest().encode("ascii")


def encode(event: Event, writer: str, seq: int, prev: str | None, chunk_list: str | None = None,
           sign_key: Any = None) -> bytes:
    """The event object's bytes: canonical JSON, with an Ed25519 signature (over the
    domain-separated BLAKE3 of the unsigned canonical JSON) when a key is given."""
    rec = body(event, writer, seq, prev, chunk_list)
    if sign_key is not None:
        from manifests import signing
        pub, sig = signing.sign_message(sign_key, signed_message(canonical(rec)))
        rec["signature"] = {"alg": "ed25519", "fingerprint": signing.fingerprint(bytes.fromhex(pub)),
                            "public_key": pub, "signature": sig}
    return canonical(rec) + b"\n"


def _hashes(v: Any) -> list[str]:
    # set(map(...)): a digest list holds tens of thousands of hashes, checked without a Python loop
    if not isinstance(v, list) or not set(map(type, v)) <= {str} or not set(map(len, v)) <= {64}:
        raise ValueError("chunk hashes must be a list of 64-hex-digit strings")
    return v


def parse(data: bytes, key: str = "") -> EventRecord:
    """An event object's bytes -> EventRecord; EventFormatError for anything else. The
    signature, if present, is parsed but checked by `signature_ok`."""
    if len(data) > MAX_EVENT_BYTES:
        raise EventFormatError(f"event object is {len(data)} bytes (at most {MAX_EVENT_BYTES})")
    try:
        obj = json.loads(data)
        if obj.get("format") != FORMAT or obj.get("version") != VERSION:
            raise ValueError(f"not an {FORMAT} version {VERSION} object")
        chunks = obj["chunks"]
        if "list" in chunks:
            ok: tuple[str, ...] = ()
            failed: tuple[str, ...] = ()
            chunk_list, count = chunks["list"], int(chunks["count"])
        else:
            ok, failed = tuple(_hashes(chunks["ok"])), tuple(_hashes(chunks["failed"]))
            chunk_list, count = None, len(ok) + len(failed)
        agent = obj["agent"]
        ev = Event(type=obj["type"], ok=obj["outcome"] == SUCCESS,
                   manifests=tuple(ManifestOutcome(m["id"], m["outcome"] == SUCCESS, int(m["problems"]),
                                                   tuple(m["first"])) for m in obj["manifests"]),
                   chunks_ok=ok, chunks_failed=failed, problems=tuple(obj["problems"]),
                   problem_count=int(obj["problem_count"]), details=dict(obj["details"]),
                   time=parse_time(obj["time"]), agent=Agent(agent["tool"], agent["host"], agent["user"]))
        seq, prev, writer = obj["seq"], obj["prev"], obj["writer"]
        if not isinstance(seq, int) or not isinstance(writer, str) or not (prev is None or isinstance(prev, str)):
            raise ValueError("bad writer, seq or prev")
        sig = obj.get("signature")
        if sig is not None and not (isinstance(sig, dict) and all(isinstance(v, str) for v in sig.values())):
            raise ValueError("bad signature field")
        return EventRecord(ev, writer, seq, prev, chunk_list, count, sig, key, blake3.blake3(data).hexdigest())
    except EventFormatError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise EventFormatError(f"malformed event object {key}: {e}") from None


def signature_ok(data: bytes) -> bool | None:
    """None if the event is unsigned; else whether its signature is a valid Ed25519
    signature of the rest of the record by the key it names."""
    obj = json.loads(data)
    sig = obj.pop("signature", None)
    if sig is None:
        return None
    from manifests import signing
    try:
        return sig.get("alg") == "ed25519" and signing.check_message(
            sig["public_key"], sig["signature"], signed_message(canonical(obj)))
    except (KeyError, TypeError, AttributeError):
        return False


def audit_rows(event: Event) -> list[tuple[str, str | None, bool, dict[str, Any]]]:
    """The catalog audit rows an event stands for: (event name, manifest id, ok, details).
    The live command and `catalog rebuild` both derive the rows from the event with this
    one function, so a rebuilt catalog's audit log is the one the commands wrote."""
    audit_name = AUDIT_NAMES[event.type]
    if not event.manifests:
        return [(audit_name, None, event.ok, dict(event.details))]
    if event.type == INGESTION:
        return [(audit_name, m.id, m.ok, dict(event.details)) for m in event.manifests]
    return [(audit_name, m.id, m.ok, {**event.details, "first": list(m.first), "manifest": m.id,
                                      "problems": m.problems}) for m in event.manifests]


def chunk_results(event: Event) -> list[tuple[str, bool]]:
    """(chunk, intact) for every chunk whose state this event establishes (its time
    becomes the chunk's last deep check)."""
    return [(h, True) for h in event.chunks_ok] + [(h, False) for h in event.chunks_failed]


# -- PREMIS 3 ------------------------------------------------------------------------------------
PREMIS_NS = "http://www.loc.gov/premis/v3"
EVENT_TYPE_AUTHORITY = "http://id.loc.gov/vocabulary/preservation/eventType"


def premis_xml(records: Iterable[EventRecord], store_url: str) -> bytes:
    """PREMIS 3 XML: one <object> (intellectual entity) per manifest referenced, one
    <event> per record (linking its agent and its manifests), one <agent> per agent."""
    import xml.etree.ElementTree as ET
    ET.register_namespace("premis", PREMIS_NS)
    xsi = "http://www.w3.org/2001/XMLSchema-instance"
    ET.register_namespace("xsi", xsi)

    def q(tag: str) -> str:
        return f"{{{PREMIS_NS}}}{tag}"

    def sub(parent: Any, tag: str, text: str | None = None, **attrs: str) -> Any:
        el = ET.SubElement(parent, q(tag), attrs)
        if text is not None:
            el.text = text
        return el

    root = ET.Element(q("premis"), {"version": "3.0"})
    records = list(records)
    objects = list(dict.fromkeys(mid for r in records for mid in r.event.manifest_ids))
    agents = list(dict.fromkeys(r.event.agent for r in records))
    for mid in objects:
        obj = sub(root, "object", **{f"{{{xsi}}}type": "premis:intellectualEntity"})
        oid = sub(obj, "objectIdentifier")
        sub(oid, "objectIdentifierType", "archiver manifest id")
        sub(oid, "objectIdentifierValue", mid)
    for r in records:
        e = r.event
        ev = sub(root, "event")
        eid = sub(ev, "eventIdentifier")
        sub(eid, "eventIdentifierType", "archiver event")
        sub(eid, "eventIdentifierValue", f"{store_url}/{r.key}#{r.hash}")
        sub(ev, "eventType", e.type, authority="eventType", authorityURI=EVENT_TYPE_AUTHORITY)
        sub(ev, "eventDateTime", r.rfc3339)
        summary = f"{len(e.manifests)} manifest(s), {r.chunk_count} chunk(s), {e.problem_count} problem(s)"
        mode = e.details.get("mode")
        sub(ev, "eventDetailInformation").append(_text(q("eventDetail"), summary + (f", mode {mode}" if mode else "")))
        info = sub(ev, "eventOutcomeInformation")
        sub(info, "eventOutcome", SUCCESS if e.ok else FAILURE)
        for line in e.problems:
            sub(sub(info, "eventOutcomeDetail"), "eventOutcomeDetailNote", line)
        la = sub(ev, "linkingAgentIdentifier")
        sub(la, "linkingAgentIdentifierType", "archiver agent")
        sub(la, "linkingAgentIdentifierValue", _agent_id(e.agent))
        sub(la, "linkingAgentRole", "executing program")
        for mid in e.manifest_ids:
            lo = sub(ev, "linkingObjectIdentifier")
            sub(lo, "linkingObjectIdentifierType", "archiver manifest id")
            sub(lo, "linkingObjectIdentifierValue", mid)
    for a in agents:
        ag = sub(root, "agent")
        aid = sub(ag, "agentIdentifier")
        sub(aid, "agentIdentifierType", "archiver agent")
        sub(aid, "agentIdentifierValue", _agent_id(a))
        sub(ag, "agentName", a.tool)
        sub(ag, "agentType", "software")
        sub(ag, "agentNote", f"host {a.host}, user {a.user}")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _text(tag: str, text: str) -> Any:
    import xml.etree.ElementTree as ET
    el = ET.Element(tag)
    el.text = text
    return el


def _agent_id(a: Agent) -> str:
    return f"{a.tool}@{a.host}/{a.user}"
