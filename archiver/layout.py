"""The one table of store keys: every object name the archiver reads or writes is built
(and parsed back) here, like restic's `layout_default.go`. Nothing else spells a key.

    store.json                          format marker
    chunks/<h[0:2]>/<h>                 encoded chunk; h = BLAKE3 of the raw bytes
    manifests/<id>.json                 canonical manifest; id = BLAKE3 of its bytes
    signatures/<id>/<fingerprint>.json  Ed25519 signature of a manifest id
    filemaps/<h[0:2]>/<h>.bin           chunk list of one large file (manifest v2), binary (file map version 2)
    filemaps/<h[0:2]>/<h>.json          the same, JSON (file map version 1: what earlier archivers wrote)
    trees/<h[0:2]>/<h>.json             one directory's entries, naming its subdirectories' trees (manifest v3)
    events/<writer>/<name>.json         immutable, hash-chained event log
    quarantine/<key>                    local stores: damaged objects moved aside by repair
    _probe/<random>/object              scratch objects of `store check` (never read as data)
    retention/<id>/<digest>.json        the write policy (Object Lock, storage class) of an archive
    packs/<p[0:2]>/<p>                  pack: small chunk objects concatenated; p = BLAKE3 of the pack
    packindex/<i[0:2]>/<i>.json         which chunk lies at which byte range of one pack; i = BLAKE3

Fan-out by the first two hex digits keeps directories small on local stores and gives
shallow verify one LIST per prefix on S3."""
from __future__ import annotations

import re

MARKER = "store.json"
CHUNKS = "chunks/"
MANIFESTS = "manifests/"
SIGNATURES = "signatures/"
FILEMAPS = "filemaps/"
TREES = "trees/"
EVENTS = "events/"
QUARANTINE = "quarantine/"
RETENTION = "retention/"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def chunk(h: str) -> str:
    return f"{CHUNKS}{h[:2]}/{h}"


def chunk_fanout(prefix2: str) -> str:
    """The LIST prefix holding every chunk whose hash starts with `prefix2`."""
    return f"{CHUNKS}{prefix2}/"


def chunk_hash(key: str) -> str | None:
    """The hash a chunk key names, or None for any other key."""
    h = key.rsplit("/", 1)[-1]
    return h if key == chunk(h) and _HEX64.match(h) else None


def manifest(mid: str) -> str:
    return f"{MANIFESTS}{mid}.json"


def manifest_id(key: str) -> str | None:
    """The id a manifest key names, or None for a stray object under manifests/."""
    name = key[len(MANIFESTS):] if key.startswith(MANIFESTS) else ""
    mid = name[:-5] if name.endswith(".json") else ""
    return mid if _HEX64.match(mid) else None


def signatures_of(mid: str) -> str:
    return f"{SIGNATURES}{mid}/"


def signature(mid: str, fingerprint: str) -> str:
    return f"{SIGNATURES}{mid}/{fingerprint}.json"


FILEMAP_BIN = ".bin"
FILEMAP_JSON = ".json"


def filemap(h: str, binary: bool = True) -> str:
    """A file map's key. The suffix names the form of its bytes, so that a tool or a person
    identifying formats by name is not misled: `.bin` for a binary map, `.json` for a JSON one
    (earlier archivers wrote every map as JSON under `.json`; the hash is the same either way
    of naming, since it covers the bytes only)."""
    return f"{FILEMAPS}{h[:2]}/{h}{FILEMAP_BIN if binary else FILEMAP_JSON}"


def filemap_keys(h: str) -> tuple[str, str]:
    """Where a reader that has only the map's hash looks, in this order: the binary key
    (what archiver writes now), then, only if that is absent, the JSON key."""
    return filemap(h), filemap(h, binary=False)


def filemap_hash(key: str) -> tuple[str, bool] | None:
    """(hash, binary suffix) a file map key names, or None for any other key."""
    name = key.rsplit("/", 1)[-1]
    for suffix, binary in ((FILEMAP_BIN, True), (FILEMAP_JSON, False)):
        h = name.removesuffix(suffix)
        if h != name and _HEX64.match(h) and key == filemap(h, binary):
            return h, binary
    return None


def tree(h: str) -> str:
    return f"{TREES}{h[:2]}/{h}.json"


def event(writer: str, name: str) -> str:
    return f"{EVENTS}{writer}/{name}.json"


def quarantined(key: str, tag: str) -> str:
    return f"{QUARANTINE}{key}.{tag}"


# -- event log: events/<writer>/<seq:012d>-<prev[:16]>.json, events/<writer>/lists/<h>.json --------
_EVENT_KEY = re.compile(r"^events/([0-9a-f]{32})/(\d{12})-([0-9a-f]{16})\.json$")
_EVENT_LIST_KEY = re.compile(r"^events/([0-9a-f]{32})/lists/([0-9a-f]{64})\.json$")


def events_of(writer: str) -> str:
    """The LIST prefix of one writer's events (and its digest lists)."""
    return f"{EVENTS}{writer}/"


def event_list(writer: str, h: str) -> str:
    """A digest-list object (the chunks an event checked), named by its BLAKE3."""
    return f"{EVENTS}{writer}/lists/{h}.json"


def parse_event_key(key: str) -> tuple[str, int, str] | None:
    """(writer, seq, prev16) for an event key, or None for any other key."""
    m = _EVENT_KEY.match(key)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def is_event_list_key(key: str) -> bool:
    return _EVENT_LIST_KEY.match(key) is not None


PROBE = "_probe/"  # scratch objects written by `store check` (a few bytes each; never read as data)


def probe(token: str) -> str:
    return f"{PROBE}{token}/object"


def retention_records_of(mid: str) -> str:
    return f"{RETENTION}{mid}/"


def retention_record(mid: str, digest: str) -> str:
    """One record of the lock an archive was made or extended with; digest names its bytes."""
    return f"{RETENTION}{mid}/{digest}.json"


# -- sealed stores (format version 2, archiver.sealing) -------------------------------------------
# keys/sets/<gen>.json          who key-object generation <gen> is wrapped to (the newest wins)
# keys/address/<gen>.age        the store's address key, age-encrypted to that generation's recipients
# keys/runs/<kid>/<gen>.age     one run's X25519 identity, age-encrypted likewise (re-wrapped by rotation)
# audits/<id>.json              the public companion of sealed manifest <id>: object keys, sizes, ciphertext BLAKE3
KEYS = "keys/"
KEY_SETS = "keys/sets/"
ADDRESS_KEYS = "keys/address/"
RUN_KEYS = "keys/runs/"
AUDITS = "audits/"
_GEN_KEY = re.compile(r"^keys/(?:sets|address|runs/[0-9a-f]{32})/(\d{8})\.(?:json|age)$")
_RUN_KEY = re.compile(r"^keys/runs/([0-9a-f]{32})/\d{8}\.age$")


def key_set(gen: int) -> str:
    return f"{KEY_SETS}{gen:08d}.json"


def address_key(gen: int) -> str:
    return f"{ADDRESS_KEYS}{gen:08d}.age"


def run_keys_of(kid: str) -> str:
    return f"{RUN_KEYS}{kid}/"


def run_key(kid: str, gen: int) -> str:
    return f"{RUN_KEYS}{kid}/{gen:08d}.age"


def key_generation(key: str) -> int | None:
    """The generation a key object's name carries, or None for any other key."""
    m = _GEN_KEY.match(key)
    return int(m.group(1)) if m else None


def run_key_id(key: str) -> str | None:
    m = _RUN_KEY.match(key)
    return m.group(1) if m else None


def audit(mid: str) -> str:
    return f"{AUDITS}{mid}.json"


def audit_id(key: str) -> str | None:
    name = key[len(AUDITS):] if key.startswith(AUDITS) else ""
    mid = name[:-5] if name.endswith(".json") else ""
    return mid if _HEX64.match(mid) else None
# -- packs (archiver.packs): small chunk objects stored together, found through pack indexes -----
PACKS = "packs/"
PACK_INDEXES = "packindex/"


def pack(p: str) -> str:
    return f"{PACKS}{p[:2]}/{p}"


def pack_id(key: str) -> str | None:
    """The id a pack key names, or None for any other key."""
    p = key.rsplit("/", 1)[-1]
    return p if key == pack(p) and _HEX64.match(p) else None


def pack_fanout(prefix2: str) -> str:
    """The LIST prefix holding every pack whose id starts with `prefix2`."""
    return f"{PACKS}{prefix2}/"


def pack_index(i: str) -> str:
    return f"{PACK_INDEXES}{i[:2]}/{i}.json"


def pack_index_id(key: str) -> str | None:
    """The id a pack-index key names, or None for any other key."""
    name = key.rsplit("/", 1)[-1]
    i = name[:-5] if name.endswith(".json") else ""
    return i if _HEX64.match(i) and key == pack_index(i) else None
