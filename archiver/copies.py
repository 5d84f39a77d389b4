"""Copy sets: the copies a store names (recorded in its catalog), and a shallow check that
every copy holds every object of each archive, by LIST pages only (one LIST per chunk-key
prefix and one of manifests/ per copy, not a request per chunk)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from archiver.errors import ArchiverError
from archiver.problems import Outcome, Problem, chunk_problem
from archiver.repository import Repository
from manifests.model import Manifest


@dataclass
class CopiesReport(Outcome):
    """`copies`: per manifest id, 'N/M' healthy copies of M (the store itself counts as one,
    healthy when its own verify found nothing wrong with the manifest)."""

    stores: list[str]
    copies: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0


def check(primary: Repository, copies: list[tuple[str, Repository | ArchiverError]], ids: list[str],
          unhealthy_here: set[str]) -> CopiesReport:
    """Shallow check of each copy for the manifests `ids` (as the primary's catalog records them)."""
    t0 = time.monotonic()
    rep = CopiesReport([primary.url] + [url for url, _ in copies])
    manifests: dict[str, Manifest] = {}
    for mid in ids:
        try:
            manifests[mid] = primary.load_manifest(mid)
        except ArchiverError as e:
            rep.problems.append(Problem(mid, "manifest", f"cannot read the manifest to check copies: {e}"))
    healthy = {mid: (0 if mid in unhealthy_here else 1) for mid in ids}
    wanted = {h for m in manifests.values() for h in m.unique_chunks()}
    expected: dict[str, tuple[str, int] | None] = {}  # file map hash -> (key, size) its bytes have
    for url, copy in copies:
        if isinstance(copy, ArchiverError):
            for mid in ids:
                rep.problems.append(Problem(mid, "copy", f"copy {url} cannot be opened: {copy}"))
            continue
        sizes = copy.chunk_sizes(wanted)
        stored = copy.manifest_sizes()
        maps = copy.filemap_listing() if any(e.filemap for m in manifests.values() for e in m.files) else {}
        trees = copy.tree_sizes() if any(m.tree for m in manifests.values()) else {}
        for mid, m in manifests.items():
            before = len(rep.problems)
            if stored.get(mid) != len(m.canonical_json()):
                what = "is missing" if mid not in stored else f"has size {stored[mid]}, not {len(m.canonical_json())}"
                rep.problems.append(Problem(mid, "manifest", f"copy {url}: the manifest {what}"))
            for h, (where, data) in sorted(primary.manifest_trees(m).items()):  # v3: the directory listings
                if h not in trees:
                    rep.problems.append(Problem(mid, "tree", f"copy {url}: tree is missing", where or "/", 0, 0, h))
                elif trees[h] != len(data):  # a reader of the copy refuses it
                    rep.problems.append(Problem(mid, "tree", f"copy {url}: tree is {trees[h]} bytes, not {len(data)}",
                                                where or "/", 0, 0, h))
            seen: set[str] = set()
            for e in m.files:
                if e.filemap and e.filemap not in maps:  # manifest v2: the file's chunk list
                    rep.problems.append(Problem(mid, "filemap", f"copy {url}: file map is missing", e.path, 0,
                                                e.size, e.filemap))
                elif e.filemap:  # under the key and of the size its bytes have, or a reader of the copy refuses it
                    if e.filemap not in expected:  # once per map, however many files name it
                        expected[e.filemap] = primary.filemap_expected(e)
                    got, want = maps[e.filemap], expected[e.filemap]
                    if want is not None and got != want:
                        rep.problems.append(Problem(mid, "filemap", f"copy {url}: file map is {got[1]} bytes under "
                                                    f"{got[0]}, not {want[1]} bytes under {want[0]}", e.path, 0,
                                                    e.size, e.filemap))
                for c in e.chunks:
                    if c.hash in seen:
                        continue
                    seen.add(c.hash)
                    got = sizes.get(c.hash)
                    if got is None:
                        rep.problems.append(chunk_problem(mid, e, c, f"copy {url}: chunk is missing", "missing-chunk"))
                    elif got != c.stored_size:
                        rep.problems.append(chunk_problem(mid, e, c, f"copy {url}: stored size {got} != recorded "
                                                                     f"{c.stored_size}", "size-mismatch"))
            here = primary.signature_fingerprints(mid)
            for fp in sorted(here - copy.signature_fingerprints(mid)):
                rep.problems.append(Problem(mid, "signature", f"copy {url}: signature {fp} is missing"))
            if len(rep.problems) == before:
                healthy[mid] += 1
    total = 1 + len(copies)
    rep.copies = {mid: f"{healthy[mid]}/{total}" for mid in ids}
    rep.seconds = round(time.monotonic() - t0, 3)
    return rep
