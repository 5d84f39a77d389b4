"""The entries of an earlier committed manifest for the files cache, read without proving
again the trees the catalog has already seen proved.

The files cache loads the manifest its rows name to reuse the entries of unchanged files.
Through `Repository.load_manifest` every tree is parsed with the reader's full checks
(`manifests.model.parse_tree`: each entry validated, then re-serialised and compared with
the bytes), the same work for every unchanged directory at every re-archive. A tree that a
recorded manifest names was parsed with exactly those checks when that manifest was
committed or recorded (`Catalog.known_trees`; `commit_manifest` skips proving such a tree for
the same reason): the same hash is the same bytes. So here a known tree's bytes are only
checked against their hash (a store object damaged since still fails) and decoded; a tree
the catalog does not know goes through `parse_tree`. Anything unexpected (a tree that does
not decode as one, a count that does not add up) falls back to the full `load_manifest`.

Nothing read here is trusted further than before: the files cache still reuses an entry
only when the file's stat matches, and only after every chunk it names is proved."""
from __future__ import annotations

import dataclasses
import json

from archiver.errors import ArchiverError
from archiver.repository import Repository
from manifests.errors import ManifestError
from manifests.model import ChunkRef, Entry, Manifest, PreviousTree, parse_tree, previous_tree


class _Odd(Exception):
    """A known tree that does not decode as this module expects: use the full reader."""


def load_for_reuse(repo: Repository, mid: str, trees: dict[str, PreviousTree] | None = None) -> Manifest:
    """Manifest `mid` with its entries, as `repo.load_manifest(mid)` returns it; trees the
    catalog knows are checked against their hash and decoded, not parsed with every check
    again. ArchiverError as load_manifest raises it. `trees`, if given, gets each tree read
    (directory -> PreviousTree), for the next commit to keep those of unchanged directories."""
    root = repo.load_root(mid)
    if not root.tree or root.resolved:
        return repo.load_manifest(mid)
    read: dict[str, PreviousTree] = {}
    try:
        entries = _walk(repo, root, read)
    except _Odd:
        return repo.load_manifest(mid)
    if len(entries) != root.entry_count:
        return repo.load_manifest(mid)
    entries.sort(key=lambda e: e.path)
    out = repo.resolve_filemaps(dataclasses.replace(root, entries=tuple(entries)))
    if trees is not None:
        trees.update(read)
    return out


def _walk(repo: Repository, root: Manifest, read: dict[str, PreviousTree]) -> list[Entry]:
    entries: list[Entry] = []
    todo = [("", root.tree)]
    while todo:
        where, h = todo.pop()
        try:
            data = repo.tree_object_proved(h, where)  # the commit need not read it again
        except ManifestError:
            raise _Odd() from None  # missing or too large: the full reader says so
        if data is None:
            raise _Odd()  # damaged since it was recorded: the full reader says so
        if repo.known_trees({h}):
            got = _decode(data, where)
        else:
            try:
                got = parse_tree(data, h, where)
            except ManifestError:
                raise _Odd() from None
        prev = previous_tree(h, data, got)
        if prev is not None:
            read[where] = prev
        for e, sub in got:
            entries.append(e)
            if len(entries) > root.entry_count:
                raise _Odd()
            if sub:
                todo.append((e.path, sub))
    return entries


def _decode(data: bytes, where: str) -> list[tuple[Entry, str]]:
    """(entry with its full path, subtree hash or "") of a tree already proved canonical:
    what `parse_tree` returns for the same bytes."""
    try:
        obj = json.loads(data)
        prefix = where + "/" if where else ""
        out: list[tuple[Entry, str]] = []
        codecs: dict[str, str] = {}
        for raw in obj["entries"]:
            path, typ, mode = prefix + raw["name"], raw["type"], raw["mode"]
            if typ == "dir":
                out.append((Entry(path=path, type="dir", mode=mode, mtime_ns=raw.get("mtime_ns")), raw.get("tree", "")))
            elif typ == "symlink":
                out.append((Entry(path=path, type="symlink", mode=mode, target=raw["target"]), ""))
            elif typ == "file":
                if "filemap" in raw:
                    e = Entry(path=path, type="file", mode=mode, size=raw["size"], mtime_ns=raw["mtime_ns"],
                              blake3=raw["blake3"], sha256=raw["sha256"], format=raw["format"],
                              tech=raw.get("tech"), filemap=raw["filemap"], chunk_count=raw["chunk_count"])
                else:
                    chunks = tuple(ChunkRef(o, n, h, s, codecs.setdefault(c, c)) for o, n, h, s, c in raw["chunks"])
                    e = Entry(path=path, type="file", mode=mode, size=raw["size"], mtime_ns=raw["mtime_ns"],
                              blake3=raw["blake3"], sha256=raw["sha256"], format=raw["format"], chunks=chunks,
                              tech=raw.get("tech"))
                out.append((e, ""))
            else:
                raise _Odd()
        return out
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _Odd() from None


def entries_by_path(repo: Repository, mid: str, trees: dict[str, PreviousTree] | None = None
                    ) -> dict[str, Entry] | None:
    """path -> file entry of manifest `mid`, or None if it cannot be loaded (the files cache
    then reads those files); `trees` as for `load_for_reuse`."""
    try:
        m = load_for_reuse(repo, mid, trees)
    except ArchiverError:
        return None
    return {e.path: e for e in m.files}

