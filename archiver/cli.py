"""The command line: parse, call the API, render (human text or one JSON document).

Errors are one line on stderr with a non-zero exit (2 for usage); tracebacks are shown
only with ARCHIVER_DEBUG=1. Progress goes to stderr, only on a terminal, never with --json."""
from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from archiver import api, malloc
from archiver.errors import ArchiverError, EmptyCatalogError, InvalidOptionError, NoStoreError, UsageError
from archiver.executors import MissingExtraError
from archiver.progress import Progress, human_bytes
from archiver.repository import Repository
from archiver.settings import Settings
from manifests.fields import model_summary
from manifests.paths import BIDI_CONTROLS

if TYPE_CHECKING:  # the checker and thaw are imported by the commands that use them (archive's start-up)
    from archiver.thaw import ThawStatus


class Ctx:
    """The group's options, resolved into Settings once (flags, then the environment)."""

    def __init__(self, store: str | None, catalog: str | None) -> None:
        self.store, self.catalog = store, catalog

    identities: tuple[str, ...] = ()  # --identity of the command (sealed stores)

    def repo(self, create: bool = False, read_only: bool = False, policy: Any = None) -> Repository:
        return Repository.open(Settings.resolve(self.store, self.catalog, identities=self.identities), create=create,
                               read_only=read_only, policy=policy)


def flag(option: str) -> str:
    """The command-line spelling of a library parameter name."""
    return option if option.isupper() else "--" + option.replace("_", "-")


def describe(err: ArchiverError) -> str:
    """An error in command-line words: parameters become flags, remedies become advice."""
    text = str(err)
    if isinstance(err, InvalidOptionError):
        text = f"{flag(err.option)} {err.reason}"
    if err.remedy:
        text += f" (use {flag(err.remedy)})"
    if isinstance(err, EmptyCatalogError):
        text += " (run `archiver catalog rebuild` to record them)"
    if isinstance(err, MissingExtraError):
        text += f": install archiver[{err.extra}]"
    return text


# What a terminal must never receive raw from a manifest or the catalog: C0, DEL and C1
# controls (ESC[2J clears the screen, U+009B is a one-byte CSI), lone surrogates (they
# cannot even be encoded), line/paragraph separators and bidirectional controls.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029" + "".join(sorted(BIDI_CONTROLS)) + "]")


def printable(text: object) -> str:
    """`text` for a human line: each control, bidi or lone-surrogate character becomes a
    \\xNN or \\uNNNN escape (as repr writes it, without the quotes); everything else is
    left alone. Names, labels, meta, paths and problem details all pass through here."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], str(text))


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _parse_meta(items: tuple[str, ...]) -> dict[str, str]:
    meta = {}
    for it in items:
        key, sep, value = it.partition("=")
        if not sep or not key:
            raise UsageError(f"--meta takes KEY=VALUE, got {it!r}")
        meta[key] = value
    return meta


def _parse_attach(items: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for it in items:
        role, sep, path = it.partition("=")
        if not sep or not role or not path:
            raise UsageError(f"--attach takes ROLE=PATH (e.g. model-card=README.md), got {it!r}")
        out.append((role, path))
    return out


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, option: str) -> float:
    """'90', '90s', '30m', '12h', '7d', '2w' -> seconds."""
    m = _DURATION.match(text.lower())
    if m is None:
        raise InvalidOptionError(option, f"takes a duration such as 7d, 12h, 30m or 3600s, got {text!r}")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def executor_options(fn: Any) -> Any:
    """--executor, --ray-address, --task-cpus, --max-inflight: passed on to the API as they are."""
    for opt in reversed([
            click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
                         help="Where the per-file tasks run: local threads (default) or a Ray cluster "
                              "(install archiver[ray])."),
            click.option("--ray-address", metavar="ADDRESS", default=None,
                         help="Ray cluster to join (auto, ray://HOST:10001); default: RAY_ADDRESS or a local Ray."),
            click.option("--task-cpus", type=int, default=None, metavar="N",
                         help="CPUs per file task (its chunk pool has N+2 threads)."),
            click.option("--max-inflight", type=int, default=None, metavar="N",
                         help="At most N file tasks at once.")]):
        fn = opt(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", metavar="URL",
              help="Store: a directory path, file:///path or s3://bucket/prefix. Default: $ARCHIVER_STORE, "
                   "else $ARCHIVER_HOME/store (ARCHIVER_HOME defaults to ~/.archiver).")
@click.option("--catalog", metavar="PATH", help="SQLite catalog file. Default: $ARCHIVER_CATALOG, else one "
                                                 "under $ARCHIVER_HOME for the store.")
@click.version_option(package_name="archiver")
@click.pass_context
def cli(ctx: click.Context, store: str | None, catalog: str | None) -> None:
    """Archive model checkpoints into a content-addressed store, verify them, restore them."""
    ctx.obj = Ctx(store, catalog)


@cli.command("archive")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--name", required=True, help="Archive name (e.g. the model's name).")
@click.option("--label", help="A label such as a version; NAME@LABEL refers to the newest with it.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Metadata recorded in the manifest.")
@click.option("--sign-key", type=click.Path(), help="Ed25519 private key (from `archiver keygen`) to sign with.")
@click.option("--trust-verified-within", metavar="DURATION",
              help="Trust stored chunks that a deep verify found intact within DURATION (e.g. 7d, 12h) "
                   "instead of reading each one back (default: prove every chunk).")
@click.option("--lock-mode", type=click.Choice(["governance", "compliance"], case_sensitive=False),
              help="S3 Object Lock mode for every object written (needs --retain-until or --retain-for).")
@click.option("--retain-until", metavar="DATE", help="Lock objects until DATE (2056-01-01 or ISO 8601, UTC).")
@click.option("--retain-for", metavar="PERIOD", help="Lock objects for PERIOD from now (30y, 52w, 90d).")
@click.option("--legal-hold", is_flag=True, help="Also place an Object Lock legal hold on every object.")
@click.option("--storage-class", type=click.Choice(["STANDARD", "STANDARD_IA", "GLACIER_IR", "GLACIER",
                                                    "DEEP_ARCHIVE"], case_sensitive=False),
              help="S3 storage class of chunk objects (store.json, manifests and signatures stay STANDARD).")
@click.option("--replicate", "replicate_", is_flag=True,
              help="Then replicate the archive to every copy the store names (`archiver copies add`).")
@click.option("--unsafe-store", is_flag=True,
              help="Use a store even though `store check` found it silently overwrites objects.")
@click.option("--profile", metavar="PROFILE", help="Metadata profile to check --meta-file against: model "
                                                    "(archiver-model/1, see docs/PROFILE.md).")
@click.option("--meta-file", type=click.Path(), metavar="JSON",
              help="Structured metadata (a JSON object) for --profile, recorded in the manifest.")
@click.option("--attach", multiple=True, metavar="ROLE=PATH",
              help="Attach a document (model card, interview transcript, eval results) under _archive/ROLE/; "
                   "repeatable.")
@click.option("--dereference", is_flag=True,
              help="Follow symlinks to regular files and archive the files (default: record symlinks as "
                   "symlinks; a Hugging Face cache snapshot's links into blobs/ are always followed).")
@click.option("--reread", is_flag=True,
              help="Read every file, even those the files cache shows unchanged since an earlier archive.")
@click.option("--processes", type=int, default=None, metavar="N",
              help="Worker processes that archive the small files (0: threads only; default: one per core "
                   "for 10,000 small files or more when a core is idle).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@executor_options
@click.pass_obj
def archive_cmd(c: Ctx, paths: tuple[str, ...], name: str, label: str | None, meta: tuple[str, ...],
                sign_key: str | None, trust_verified_within: str | None, lock_mode: str | None,
                retain_until: str | None, retain_for: str | None, legal_hold: bool, storage_class: str | None,
                replicate_: bool, unsafe_store: bool, profile: str | None, meta_file: str | None,
                attach: tuple[str, ...], dereference: bool, reread: bool, as_json: bool, processes: int | None = None,
                **ex: Any) -> None:
    """Archive files and directories; prints the manifest id."""
    meta_d = _parse_meta(meta)
    attachments = _parse_attach(attach)
    block = api.make_profile_block(profile, meta_file)  # refused (exit 2, the first bad field) before any scan
    if replicate_ and not _named_copies(c):
        raise UsageError("--replicate: this store names no copies (add one with `archiver copies add URL`)")
    key = api.signing_key(sign_key)  # refused before the store is touched
    trust = None if trust_verified_within is None else parse_duration(trust_verified_within,
                                                                       "trust_verified_within")
    policy = api.write_policy(lock_mode=lock_mode, retain_until=retain_until, retain_for=retain_for,
                              legal_hold=legal_hold, storage_class=storage_class)
    with c.repo(create=True, policy=policy) as repo:
        res = api.archive(paths, name=name, label=label, meta=meta_d, sign_key=key, repo=repo, write_policy=policy,
                          trust_verified_within=trust, progress=Progress.for_terminal("archive", quiet=as_json),
                          unsafe_store=unsafe_store, profile_block=block, attach=attachments, dereference=dereference,
                          reread=reread, processes=processes, **ex)
        copies = _replicate_new(c, repo, res.id, as_json, unsafe_store) if replicate_ else None
    if as_json:
        emit(res.to_dict() if copies is None else {**res.to_dict(), "replicated": [r.to_dict() for r in copies],
                                                   "ok": all(r.ok for r in copies)})
        if copies is not None and not all(r.ok for r in copies):
            sys.exit(1)
        return
    click.echo(res.id)
    click.echo(f"{res.files} files, {human_bytes(res.bytes_in)} in, {human_bytes(res.bytes_stored)} stored "
               f"({human_bytes(res.new_bytes_stored)} new in {res.new_chunks} of {res.chunks} chunks), "
               f"{res.seconds:.1f}s", err=True)
    if res.resumed_files:
        click.echo(f"resumed {res.resumed_files} file(s) archived by an interrupted run of this archive", err=True)
    if res.repaired_chunks:
        click.echo(f"repaired {res.repaired_chunks} damaged chunk(s) in the store from the source "
                   f"(the damaged objects are kept under quarantine/ and each repair is in the catalog audit log)", err=True)
    for r in copies or []:
        for p in r.problems:
            click.echo(printable(p.line()), err=True)
        click.echo(printable(f"{'replicated to' if r.ok else 'FAILED to replicate to'} {r.destination}: "
                             f"{r.objects_written} object(s) written"), err=True)
    if copies is not None and not all(r.ok for r in copies):
        sys.exit(1)


@cli.command("list")
@click.option("--name", help="Only archives with this name.")
@click.option("--where", multiple=True, metavar="KEY OP VALUE",
              help="Only archives whose indexed metadata meets this (repeatable, all must hold): "
                   "KEY=V, KEY!=V, KEY<V, KEY<=V, KEY>V, KEY>=V, KEY~GLOB; KEY is a profile field path "
                   "(license, provenance.revision), meta.KEY, attachment, profile or tech.* (docs/PROFILE.md).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_cmd(c: Ctx, name: str | None, where: tuple[str, ...], as_json: bool) -> None:
    """List archives in the catalog, oldest first (each after its parent). Time '-': unknown
    (recorded by `catalog rebuild`)."""
    api.parse_where(where)  # a malformed condition is refused before the catalog is opened
    with c.repo(read_only=True) as repo:
        rows = api.list_archives(name, where=where, repo=repo)
    data = [r.to_dict() for r in rows]
    if as_json:
        emit(data)
        return
    for d in data:
        at = d["recorded_at"]
        when = "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
        click.echo(printable(f"{d['id'][:16]}  {when}  {d['name']}@{d['label'] or '-'}  {d['files']} files  "
                             f"{human_bytes(d['size'])}"))


@cli.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show_cmd(c: Ctx, ref: str, as_json: bool) -> None:
    """Show one manifest. REF: an id, a unique id prefix, NAME (newest in its chain),
    NAME@LABEL, or unambiguously id:PREFIX or name:NAME[@LABEL]."""
    with c.repo(read_only=True) as repo:
        mid, m = api.show(ref, repo=repo)
    if as_json:
        doc = m.to_dict()
        if m.tree:  # v3: the root names its trees; show lists the entries they hold, as v1/v2 do
            doc["entries"] = [e.to_json() for e in sorted(m.entries, key=lambda e: e.path)]
        emit({"id": mid, "manifest": doc, "summary": model_summary(m)})
        return
    lines = [f"id:      {mid}", f"name:    {m.name}", f"label:   {m.label or '-'}", f"parent:  {m.parent or '-'}"]
    lines += [f"meta:    {k}={v}" for k, v in sorted(m.meta.items())]
    from archiver.showpkg import package_lines  # with its format readers: only `show` words a package
    lines += package_lines(m)
    lines.append(f"files:   {len(m.files)}, {human_bytes(m.total_size)}, stored {human_bytes(m.stored_size)}")
    for e in sorted(m.entries, key=lambda e: e.path):
        if e.is_file:
            lines.append(f"  {e.mode:04o} {e.size:>14}  {e.blake3[:16]}  {e.path}  ({len(e.chunks)} chunks"
                         f"{', ' + e.format if e.format else ''})")
        elif e.is_symlink:
            lines.append(f"  {'link':>4} {'symlink':>14}  {'':16}  {e.path} -> {e.target}")
        else:
            lines.append(f"  {e.mode:04o} {'dir':>14}  {'':16}  {e.path}/")
    for line in lines:
        click.echo(printable(line))


@cli.command("verify")
@click.argument("refs", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every archive in the catalog.")
@click.option("--deep", is_flag=True, help="Download, decode and re-hash every chunk and file.")
@click.option("--sample", type=float, metavar="FRACTION", help="Deep-check this fraction of chunks, stalest first.")
@click.option("--max-bytes", metavar="SIZE",
              help="Budget for a sampled run: stop once SIZE stored bytes are read (e.g. 50G; implies --sample 1).")
@click.option("--max-seconds", metavar="DURATION",
              help="Budget for a sampled run: start no chunk after DURATION (e.g. 2h; implies --sample 1).")
@click.option("--trust-key", multiple=True, metavar="PUBKEY",
              help="Require a signature by this public key (file or hex); repeatable.")
@click.option("--sign-key", type=click.Path(), help="Sign this run's event in the store's log with this key.")
@click.option("--copies", "copies_", is_flag=True,
              help="Also check (by LIST) that every copy the store names holds every object.")
@click.option("--retention", is_flag=True,
              help="Check every object's Object Lock against the archive's recorded policy.")
@click.option("--retain-until", metavar="DATE", help="With --retention: every object locked at least until DATE.")
@click.option("--identity", "identity", multiple=True, type=click.Path(), metavar="FILE",
              help="Sealed stores: a custodian's age identity file (repeatable; or ARCHIVER_IDENTITY).")
@click.option("--thaw", is_flag=True, help="With --deep or --sample: thaw cold chunks first and check them too.")
@click.option("--tier", type=click.Choice(["Bulk", "Standard", "Expedited"]), default="Bulk", show_default=True)
@click.option("--days", type=int, default=1, show_default=True, help="Days thawed copies stay readable.")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--poll", "poll", type=float, default=60.0, show_default=True, metavar="SECONDS")
@click.option("--json", "as_json", is_flag=True)
@click.option("--processes", type=int, default=None, metavar="N",
              help="With --deep: worker processes that prove the small files' packs while the archive loads "
                   "(0: threads only; default: one less than the cores for 10,000 small files or more when a core "
                   "is idle).")
@executor_options
@click.pass_obj
def verify_cmd(c: Ctx, refs: tuple[str, ...], all_: bool, deep: bool, sample: float | None,
               max_bytes: str | None, max_seconds: str | None, trust_key: tuple[str, ...], sign_key: str | None,
               copies_: bool, retention: bool, retain_until: str | None, thaw: bool, tier: str,
               days: int, wait: bool, poll: float, as_json: bool, identity: tuple[str, ...] = (),
               processes: int | None = None, **ex: Any) -> None:
    """Prove archives complete and uncorrupted. Exit 0 all good, 1 problems found, 2 usage.
    REF as for `show` (id:PREFIX and name:NAME[@LABEL] are never ambiguous). On a sealed
    store --deep without --identity re-hashes every object's ciphertext."""
    c.identities = identity
    if bool(refs) == all_:
        raise UsageError("give REF... or --all (not both)")
    budget_bytes = None if max_bytes is None else parse_size(max_bytes, "max_bytes")
    budget_seconds = None if max_seconds is None else parse_duration(max_seconds, "max_seconds")
    from archiver.checker import check_budget, check_sample
    from archiver.thaw import ThawOptions
    sample = check_budget(deep, sample, budget_bytes, budget_seconds)
    check_sample(sample)  # usage errors before the store is opened
    trusted = api.trusted_keys(trust_key)
    key = api.signing_key(sign_key)
    with c.repo(read_only=True) as repo:
        rep = api.verify(refs, all_archives=all_, deep=deep, sample=sample, trust_keys=trusted, repo=repo,
                         progress=Progress.for_terminal("verify", quiet=as_json), max_bytes=budget_bytes,
                         max_seconds=budget_seconds, sign_key=key, retention=retention, retain_until=retain_until,
                         thaw=ThawOptions(days=days, tier=tier, wait=wait, poll_seconds=poll,
                                          report=None if as_json else _thaw_line) if thaw else None,
                         processes=processes, **ex)
        cop = api.verify_copies(rep.manifests, {p.manifest for p in rep.problems}, repo=repo,
                                settings=Settings.resolve(c.store, c.catalog)) if copies_ else None
    if rep.audit_error is not None:
        click.echo(f"archiver: warning: this verify is not in the catalog's audit log: {rep.audit_error}", err=True)
    if rep.event_error is not None:
        click.echo(f"archiver: warning: this verify is not in the store's event log: {rep.event_error}", err=True)
    ok = rep.ok and (cop is None or cop.ok)
    if as_json:
        emit(rep.to_dict() if cop is None else {**rep.to_dict(), "copies": cop.to_dict(), "ok": ok})
    else:
        for p in rep.problems + (cop.problems if cop is not None else []):
            click.echo(printable(p.line()))
        if cop is not None:
            for mid, counted in cop.copies.items():
                click.echo(f"{mid[:16]}  copies: {counted}")
        problems = len(rep.problems) + (len(cop.problems) if cop is not None else 0)
        status = "OK" if ok else f"FAILED: {problems} problem(s)"
        click.echo(f"{status} — {rep.mode} verify of {len(rep.manifests)} archive(s): {rep.chunks_checked} chunks "
                   f"listed, {rep.chunks_read} read ({human_bytes(rep.bytes_read)}), {rep.files_hashed} files "
                   f"hashed, {rep.seconds:.1f}s" + (f"; {len(cop.stores) - 1} cop(ies) listed" if cop else ""))
        if rep.not_checked_cold:
            click.echo(f"not checked (cold): {len(rep.not_checked_cold)} chunk(s) in GLACIER/DEEP_ARCHIVE need a "
                       f"thaw before they can be read (shallow checks passed for them)")
        if rep.retention_checked:
            click.echo(f"retention: {rep.retention_checked} object lock(s) checked")
    sys.exit(0 if ok else 1)


@cli.command("restore")
@click.argument("ref")
@click.argument("dest", type=click.Path())
@click.option("--include", multiple=True, metavar="GLOB", help="Only paths matching GLOB (repeatable).")
@click.option("--force", is_flag=True, help="Restore into a non-empty DEST, replacing files.")
@click.option("--trust-key", multiple=True, metavar="PUBKEY",
              help="Refuse unless signed by this public key (file or hex); repeatable.")
@click.option("--preserve-special-bits", is_flag=True,
              help="Keep setuid, setgid and sticky bits (dropped by default).")
@click.option("--identity", "identity", multiple=True, type=click.Path(), metavar="FILE",
              help="Sealed stores: a custodian's age identity file (repeatable; or ARCHIVER_IDENTITY).")
@click.option("--thaw", is_flag=True, help="Thaw chunks in GLACIER / DEEP_ARCHIVE first (RestoreObject, billed).")
@click.option("--tier", type=click.Choice(["Bulk", "Standard", "Expedited"]), default="Bulk", show_default=True,
              help="Thaw tier: slower is cheaper.")
@click.option("--days", type=int, default=7, show_default=True, help="Days the thawed copies stay readable.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for the thaw and restore, or request it and exit.")
@click.option("--poll", "poll", type=float, default=60.0, show_default=True, metavar="SECONDS",
              help="How often to check a thaw's progress.")
@click.option("--plan", is_flag=True, help="Only show what the restore needs (chunks, thaw, cost, time); write nothing.")
@click.option("--prices", type=click.Path(), metavar="FILE", help="Price file for --plan (default: the shipped one).")
@click.option("--processes", type=int, default=None, metavar="N",
              help="Worker processes that restore the small files beside this one (0: threads only; default: "
                   "one per core less one for 10,000 small files or more from a local store when a core is idle).")
@click.option("--json", "as_json", is_flag=True)
@executor_options
@click.pass_obj
def restore_cmd(c: Ctx, ref: str, dest: str, include: tuple[str, ...], force: bool, trust_key: tuple[str, ...],
                preserve_special_bits: bool, thaw: bool, tier: str, days: int, wait: bool, poll: float,
                plan: bool, prices: str | None, as_json: bool, identity: tuple[str, ...] = (),
                processes: int | None = None, **ex: Any) -> None:
    """Restore an archive into DEST, verifying every byte. REF as for `show`."""
    c.identities = identity
    if plan:
        with c.repo(read_only=True) as repo:
            p = api.restore_plan(ref, include=include, tier=tier, prices=prices, repo=repo)
        if as_json:
            emit(p)
            return
        t = p["thaw"]
        click.echo(f"{p['id']}: {p['files']} files, {human_bytes(p['bytes'])}; {p['chunks']} chunks, "
                   f"{human_bytes(p['stored_bytes'])} to read")
        if not p["needs_thaw"]:
            click.echo("every chunk is readable now: no thaw needed")
            return
        click.echo(f"needs a thaw: {t['frozen']} chunks not requested, {t['thawing']} thawing, {t['thawed']} thawed "
                   f"({human_bytes(t['cold_bytes'])} in {', '.join(t['classes'])})")
        for cls, tiers in sorted(p["thaw_cost"].items()):
            for name, row in tiers.items():
                click.echo(f"  {cls} {name}: ${row['total']:.4f}{_hours(row['hours'])}")
        click.echo(f"prices as of {p['prices_as_of']}; re-run with --thaw --tier {tier} to restore")
        return
    from archiver.thaw import ThawOptions, expected_hours
    trusted = api.trusted_keys(trust_key)
    options = None
    if thaw:
        options = ThawOptions(days=days, tier=tier, wait=wait, poll_seconds=poll,
                              report=None if as_json else _thaw_line)
    with c.repo(read_only=True) as repo:  # restore writes no catalog row
        res = api.restore(ref, dest, include=include, force=force, trust_keys=trusted, repo=repo,
                          progress=Progress.for_terminal("restore", quiet=as_json),
                          preserve_special_bits=preserve_special_bits, thaw=options, processes=processes, **ex)
    if res.thaw is not None and not res.thaw["ready"]:
        if as_json:
            emit(res.to_dict())
        else:
            span = expected_hours(res.thaw["classes"], tier)
            when = f"; expect {span[0]:g}-{span[1]:g} h for {tier}" if span else ""
            click.echo(f"thaw requested for {res.thaw['requested']} chunk(s), {res.thaw['thawing']} thawing, "
                       f"{res.thaw['thawed']} thawed{when}; nothing restored yet: re-run the same restore --thaw "
                       f"later (chunks already thawing are not requested again)", err=True)
        sys.exit(0)
    if as_json:
        emit(res.to_dict())
    else:
        for p in res.problems:
            click.echo(printable(f"not restored: {p.path}: {p.line()}"), err=True)
        click.echo(printable(f"{'restored' if res.ok else 'FAILED'}: {res.files} files, {human_bytes(res.bytes)} "
                             f"into {res.dest} in {res.seconds:.1f}s"), err=not res.ok)
    sys.exit(0 if res.ok else 1)


def _hours(span: list[float] | None) -> str:
    if not span or span[1] == 0:
        return ""
    lo, hi = span
    if hi < 1:
        return f", {lo * 60:g}-{hi * 60:g} min"
    return f", within {hi:g} h" if lo == 0 else f", {lo:g}-{hi:g} h"


@cli.command("estimate")
@click.argument("ref")
@click.option("--class", "storage_class", type=click.Choice(["STANDARD", "STANDARD_IA", "GLACIER_IR", "GLACIER",
                                                             "DEEP_ARCHIVE"], case_sensitive=False),
              help="Price every chunk as if it were in this class (default: the class each is in).")
@click.option("--prices", type=click.Path(), metavar="FILE", help="Price file (default: the shipped, dated one).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def estimate_cmd(c: Ctx, ref: str, storage_class: str | None, prices: str | None, as_json: bool) -> None:
    """Monthly storage, upload and restore cost of an archive, and thaw times."""
    with c.repo(read_only=True) as repo:
        est = api.estimate(ref, storage_class=storage_class, prices=prices, repo=repo)
    if as_json:
        emit(est.to_dict())
        return
    what = f" (every chunk priced as {est.what_if})" if est.what_if else ""
    click.echo(f"{est.id}: {est.chunks} chunks, {human_bytes(est.stored_bytes)} stored{what}")
    for cls, cc in est.classes.items():
        over = " incl. 40 KiB index per object" if cc.standard_overhead_bytes else ""
        click.echo(f"  {cls}: {cc.objects} objects, {human_bytes(cc.bytes)}, ${cc.monthly_storage:.4f}/month{over}; "
                   f"upload ${cc.upload_requests:.4f}; minimum {cc.minimum_days} days (${cc.minimum_charge:.4f})")
        for tier, row in cc.restore.items():
            click.echo(f"    restore {tier}: ${row['total']:.4f} (requests ${row['restore_requests']:.4f}, "
                       f"retrieval ${row['retrieval']:.4f}, GET ${row['get_requests']:.4f}){_hours(row['hours'])}")
    click.echo(f"monthly storage: ${est.monthly_storage:.4f}; prices as of {est.prices_as_of} "
               f"(see --json prices_source; replace with --prices FILE)")


def _thaw_line(st: ThawStatus) -> None:
    """One progress line per poll of a thaw (stderr)."""
    click.echo(f"thaw: {len(st.thawed)}/{len(st.classes)} chunks readable, {len(st.thawing)} thawing, "
               f"{st.requested} requested by this run, waited {st.waited_seconds:.0f}s", err=True)


@cli.command("export")
@click.argument("ref")
@click.argument("dest", type=click.Path())
@click.option("--bagit", "fmt", flag_value="bagit", help="Write a BagIt bag (RFC 8493) at DEST.")
@click.option("--ocfl", "fmt", flag_value="ocfl", help="Write an OCFL 1.1 object at DEST, one version per "
                                                      "archive in REF's chain (v1 = the oldest).")
@click.option("--trust-key", multiple=True, metavar="PUBKEY",
              help="Refuse unless signed by this public key (file or hex); repeatable.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def export_cmd(c: Ctx, ref: str, dest: str, fmt: str | None, trust_key: tuple[str, ...], as_json: bool) -> None:
    """Export an archive in a standard layout, re-hashing every byte. REF as for `show`;
    DEST must not exist or be an empty directory."""
    if fmt is None:
        raise UsageError("give --bagit or --ocfl")
    trusted = api.trusted_keys(trust_key)
    with c.repo(read_only=True) as repo:
        res = api.export(ref, dest, format=fmt, trust_keys=trusted, repo=repo,
                         progress=Progress.for_terminal("export", quiet=as_json))
    if as_json:
        emit(res.to_dict())
    else:
        versions = f", {len(res.versions)} version(s)" if res.versions else ""
        click.echo(printable(f"exported {res.id[:16]} as {res.format}: {res.files} files, {human_bytes(res.bytes)} "
                             f"into {res.dest}{versions} in {res.seconds:.1f}s"))


@cli.command("keygen")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def keygen_cmd(path: str, as_json: bool) -> None:
    """Create an Ed25519 signing key at PATH (0600) and its public key at PATH.pub."""
    priv, pub = api.keygen(path)
    if as_json:
        emit({"private_key": str(priv), "public_key": str(pub)})
    else:
        click.echo(f"private key: {priv}\npublic key:  {pub}")


@cli.group("catalog")
def catalog_grp() -> None:
    """Catalog maintenance."""


@catalog_grp.command("rebuild")
@click.option("--identity", "identity", multiple=True, type=click.Path(), metavar="FILE",
              help="Sealed stores: a custodian's age identity file (repeatable; or ARCHIVER_IDENTITY).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def rebuild_cmd(c: Ctx, as_json: bool, identity: tuple[str, ...] = ()) -> None:
    """Recreate the catalog from the manifests in the store. A bad manifest is skipped and
    reported; exit 1 if any was. A sealed store's manifests need --identity."""
    c.identities = identity
    with c.repo() as repo:
        res = api.rebuild_catalog(repo=repo)
    _catalog_outcome(res, "rebuilt", as_json)


@catalog_grp.command("sync")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def sync_cmd(c: Ctx, as_json: bool) -> None:
    """Record the archives other hosts wrote to the store since this catalog last looked
    (each host keeps its own catalog on local disk). A bad manifest is skipped and reported;
    exit 1 if any was."""
    with c.repo() as repo:
        res = api.sync_catalog(repo=repo)
    _catalog_outcome(res, "synced", as_json)


def _catalog_outcome(res: Any, done: str, as_json: bool) -> None:
    """What `catalog rebuild` / `catalog sync` recorded: each skipped manifest, one summary
    line; exit 1 if any manifest was skipped."""
    if as_json:
        emit(res.to_dict())
    else:
        for p in res.problems:
            click.echo(printable(f"skipped: {p.line()}"), err=True)
        skipped = f", {len(res.problems)} bad manifest(s) skipped" if res.problems else ""
        click.echo(f"catalog {done}: {len(res.added)} manifest(s) added of {res.manifests} in the store{skipped}",
                   err=not res.ok)
    sys.exit(0 if res.ok else 1)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$")
_UNIT_BYTES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str, option: str) -> int:
    """'1048576', '512K', '50G', '1.5TiB' -> bytes (binary units)."""
    m = _SIZE.match(text.lower())
    if m is None or float(m.group(1)) * _UNIT_BYTES[m.group(2)] < 1:
        raise InvalidOptionError(option, f"takes a size such as 500M, 50G or 2T (at least 1 byte), got {text!r}")
    return int(float(m.group(1)) * _UNIT_BYTES[m.group(2)])


def parse_since(text: str, option: str) -> float:
    """A date (2026-11-01), an RFC 3339 time (2026-11-01T12:00:00Z) or a duration ago (7d)."""
    from datetime import datetime, timezone
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            pass
    try:
        return time.time() - parse_duration(text, option)
    except InvalidOptionError:
        raise InvalidOptionError(option, f"takes a date (2026-11-01), a UTC time (2026-11-01T12:00:00Z) or a "
                                         f"duration ago (7d), got {text!r}") from None


def _when(at: float | None) -> str:
    return "never" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


@cli.group("fixity")
def fixity_grp() -> None:
    """The fixity programme: how much of the store has been proved intact, and when."""


@fixity_grp.command("status")
@click.option("--window", default="90d", show_default=True, metavar="DURATION",
              help="Every chunk must have been deep-verified intact within this long.")
@click.option("--copies", "copies_", is_flag=True, help="Also report each copy the store names (its own checks).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def fixity_status_cmd(c: Ctx, window: str, copies_: bool, as_json: bool) -> None:
    """Per archive and overall: chunks and bytes deep-verified intact within the window,
    the oldest check, chunks never checked, failures not repaired. Exit 1 when anything
    falls outside the window."""
    seconds = parse_duration(window, "window")
    with c.repo(read_only=True) as repo:
        st = api.fixity_status(seconds, repo=repo, settings=Settings.resolve(c.store, c.catalog), copies=copies_)
    if as_json:
        emit(st.to_dict())
    else:
        for url, cst in st.copies.items():
            if isinstance(cst, str):
                click.echo(printable(f"copy {url}: cannot be opened: {cst}"))
                continue
            cov = cst.overall
            click.echo(printable(f"copy {url}: {100 * cov.chunks_ok / max(cov.chunks, 1):.1f}% of {cov.chunks} "
                                 f"chunks verified within {window}; never checked {cov.never_checked}; "
                                 f"failed {len(cov.failed)}"))
        for cov in [*st.archives, st.overall]:
            ident = "overall" if cov.manifest is None else f"{cov.manifest[:16]}  {cov.name}"
            click.echo(printable(
                f"{ident}: {100 * cov.chunks_ok / max(cov.chunks, 1):.1f}% of {cov.chunks} chunks, "
                f"{100 * cov.bytes_ok / max(cov.bytes, 1):.1f}% of {human_bytes(cov.bytes)} verified within {window}; "
                f"oldest check {_when(cov.oldest_check)}; never checked {cov.never_checked}; stale {cov.stale}; "
                f"failed {len(cov.failed)}"))
        outside = st.overall.chunks - st.overall.chunks_ok
        click.echo("OK: every chunk verified intact within the window" if st.ok else
                   f"OUTSIDE THE WINDOW: {outside} chunk(s) not verified intact within {window}"
                   +                    ("; and a copy falls outside it" if any(isinstance(x, str) or not x.ok for x in st.copies.values())
                    else ""), err=not st.ok)
    sys.exit(0 if st.ok else 1)


@cli.command("events")
@click.argument("ref", required=False)
@click.option("--since", metavar="DATE", help="Only events at or after DATE (2026-11-01, RFC 3339, or 7d ago).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--premis", is_flag=True, help="Print PREMIS 3 XML (objects, events, agents).")
@click.pass_obj
def events_cmd(c: Ctx, ref: str | None, since: str | None, as_json: bool, premis: bool) -> None:
    """List the store's event log, oldest first (only events naming REF, if given). Exit 1
    if the log itself is damaged (a deleted or altered event, a bad signature)."""
    if as_json and premis:
        raise UsageError("give --json or --premis (not both)")
    after = None if since is None else parse_since(since, "since")
    with c.repo(read_only=True) as repo:
        log = api.event_log(ref, since=after, repo=repo)
        url = repo.url
    if premis:
        from archiver.events import premis_xml
        click.echo(premis_xml(log.records, url).decode("utf-8"))
    elif as_json:
        emit({"ok": not log.problems, "events": [r.to_dict() for r in log.records],
              "problems": [p.__dict__ for p in log.problems]})
    else:
        for r in log.records:
            e = r.event
            mids = ",".join(m[:12] for m in e.manifest_ids) or "-"
            mode = f" {e.details['mode']}" if "mode" in e.details else ""
            click.echo(printable(f"{r.rfc3339}  {e.type}{mode}  {'ok' if e.ok else 'FAILED'}  {mids}  "
                                 f"{r.chunk_count} chunk(s)  {e.problem_count} problem(s)  "
                                 f"{e.agent.user}@{e.agent.host}  {r.writer[:8]}:{r.seq}"))
    for p in log.problems:
        click.echo(printable(p.line()), err=True)
    sys.exit(0 if not log.problems else 1)


@cli.command("replicate")
@click.argument("refs", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every archive in the catalog.")
@click.option("--to", "to", required=True, metavar="URL",
              help="The copy: a path, file:///path or s3://bucket/prefix[?profile=&endpoint=&region=].")
@click.option("--to-catalog", metavar="PATH", help="The copy's catalog (default: one under $ARCHIVER_HOME for it).")
@click.option("--unsafe-store", is_flag=True,
              help="Write to the copy even though `store check` found it silently overwrites objects.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def replicate_cmd(c: Ctx, refs: tuple[str, ...], all_: bool, to: str, to_catalog: str | None, unsafe_store: bool,
                  as_json: bool) -> None:
    """Copy archives (with their ancestors), their chunks and signatures to another store.
    Every chunk is proved before it is written; exit 1 if anything could not be copied."""
    if bool(refs) == all_:
        raise UsageError("give REF... or --all (not both)")
    res = api.replicate(refs, to=to, all_archives=all_, settings=Settings.resolve(c.store, c.catalog),
                        to_catalog=to_catalog, progress=Progress.for_terminal("replicate", quiet=as_json),
                        unsafe_store=unsafe_store)
    if res.unlocked and not as_json:
        click.echo(printable(f"archiver: warning: {len(res.unlocked)} archive(s) locked at the source are not "
                             f"locked on {res.destination} (it cannot hold an Object Lock)"), err=True)
    _report_copy(res, as_json, f"replicated {len(res.manifests)} archive(s) to {res.destination}: "
                               f"{res.objects_written} object(s) written ({human_bytes(res.bytes_written)}), "
                               f"{res.chunks_present} chunk(s) already there, {res.chunks_checked} proved, "
                               f"{res.seconds:.1f}s")


@cli.command("repair")
@click.argument("refs", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every archive in the catalog (the default without REF).")
@click.option("--from", "from_", multiple=True, metavar="URL",
              help="A copy to take good objects from; repeatable (default: the copies from `copies add`).")
@click.option("--dry-run", is_flag=True, help="List what is bad and where the good bytes are; change nothing.")
@click.option("--sample", type=float, metavar="FRACTION",
              help="Read only this fraction of chunks (stalest first), besides those missing or wrong-sized.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def repair_cmd(c: Ctx, refs: tuple[str, ...], all_: bool, from_: tuple[str, ...], dry_run: bool,
               sample: float | None, as_json: bool) -> None:
    """Deep-check archives and heal every damaged or missing chunk, manifest and signature
    from a copy whose bytes prove good (damaged objects are kept under quarantine/). Exit 1
    if anything could not be healed."""
    if refs and all_:
        raise UsageError("give REF... or --all (not both)")
    from archiver.checker import check_sample
    check_sample(sample)
    res = api.repair(refs, sources=from_, all_archives=all_, dry_run=dry_run, sample=sample,
                     settings=Settings.resolve(c.store, c.catalog))
    if not as_json:
        for f in res.fixes:
            where = f"from {f.source}" if f.source else "no healthy copy"
            click.echo(printable(f"{'plan' if res.dry_run else f.action}: {f.state} {f.kind} {f.name} ({where})"))
    verb = "would repair" if res.dry_run else "repaired"
    _report_copy(res, as_json, f"{verb} {len(res.fixes) if res.dry_run else res.repaired} object(s) in "
                               f"{res.target} ({res.chunks_checked} chunks checked), {res.seconds:.1f}s")


def _named_copies(c: Ctx) -> list[str]:
    """The copies the store names; none for a store that does not exist yet."""
    try:
        return api.copies_list(settings=Settings.resolve(c.store, c.catalog))
    except NoStoreError:
        return []


def _replicate_new(c: Ctx, repo: Repository, mid: str, as_json: bool, unsafe_store: bool) -> list[Any]:
    """Replicate a just-committed archive to every copy the store names."""
    settings = Settings.resolve(c.store, c.catalog)
    return [api.replicate([mid], to=url, repo=repo, settings=settings, unsafe_store=unsafe_store,
                          progress=Progress.for_terminal("replicate", quiet=as_json)) for url in repo.copies()]


@cli.group("copies")
def copies_grp() -> None:
    """The copies of this store (recorded in its catalog): replicate, verify --copies and
    repair use them."""


@copies_grp.command("add")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def copies_add_cmd(c: Ctx, url: str, as_json: bool) -> None:
    """Name URL (path, file:// or s3://bucket/prefix[?profile=&endpoint=&region=]) as a copy."""
    full, added = api.copies_add(url, settings=Settings.resolve(c.store, c.catalog))
    if as_json:
        emit({"copy": full, "added": added})
    else:
        click.echo(printable(f"{'added' if added else 'already a copy'}: {full}"))


@copies_grp.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def copies_list_cmd(c: Ctx, as_json: bool) -> None:
    """The copies this store names."""
    urls = api.copies_list(settings=Settings.resolve(c.store, c.catalog))
    if as_json:
        emit(urls)
    else:
        for u in urls:
            click.echo(printable(u))


@copies_grp.command("remove")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def copies_remove_cmd(c: Ctx, url: str, as_json: bool) -> None:
    """Forget URL as a copy (the copy's store is not touched). Exit 1 if it was not one."""
    removed = api.copies_remove(url, settings=Settings.resolve(c.store, c.catalog))
    if as_json:
        emit({"copy": url, "removed": removed, "ok": removed})
    else:
        click.echo(printable(f"{'removed' if removed else 'not a copy'}: {url}"), err=not removed)
    sys.exit(0 if removed else 1)


@cli.group("store")
def store_grp() -> None:
    """Store maintenance."""


@store_grp.command("check")
@click.argument("url", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def store_check_cmd(c: Ctx, url: str | None, as_json: bool) -> None:
    """Probe what the store (URL, default --store) really enforces, under _probe/: that a
    second If-None-Match write fails, that checksummed writes are accepted, versioning and
    Object Lock. Exit 1 if it silently overwrites (archive and replicate then refuse it)."""
    res = api.store_check(settings=Settings.resolve(url or c.store, None if url else c.catalog))
    if as_json:
        emit({**res.to_dict(), "overwrites": res.overwrites})
    else:
        for label, value in (("conditional writes", res.conditional_writes), ("checksums", res.checksums),
                             ("versioning", res.versioning), ("object lock", res.object_lock)):
            click.echo(printable(f"{label + ':':20}{value if value is not None else '-'}"))
        click.echo(printable(f"{'OK' if res.ok else 'UNSAFE'} — {res.store} (probe object {res.probe_key})"))
    sys.exit(0 if res.ok else 1)


@store_grp.command("init")
@click.argument("url", required=False)
@click.option("--encrypt-to", "encrypt_to", multiple=True, metavar="RECIPIENT",
              help="Create a sealed store encrypted to this age X25519 recipient (age1...); repeatable.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def store_init_cmd(c: Ctx, url: str | None, encrypt_to: tuple[str, ...], as_json: bool) -> None:
    """Create a store at URL (default --store). With --encrypt-to, a sealed store: only the
    recipients' identities can read it; this host gets the address key file it needs to archive."""
    res = api.store_init(settings=Settings.resolve(url or c.store, None if url else c.catalog), encrypt_to=encrypt_to)
    if as_json:
        emit({"ok": True, **res})
    elif res["sealed"]:
        click.echo(printable(f"sealed store {res['store']} (id {res['store_id']}) for {len(res['recipients'])} "
                             f"recipient(s); address key for archive hosts: {res['address_key_file']}"))
    else:
        click.echo(printable(f"store {res['store']}"))


def _report_copy(res: Any, as_json: bool, summary: str) -> None:
    """Print a replicate or repair result and exit 0 (ok) or 1 (problems)."""
    if as_json:
        emit(res.to_dict())
    else:
        for p in res.problems:
            click.echo(printable(p.line()))
        click.echo(printable(("OK — " if res.ok else f"FAILED: {len(res.problems)} problem(s) — ") + summary))
    sys.exit(0 if res.ok else 1)


@cli.group("retention")
def retention_grp() -> None:
    """Object Lock retention of archives in an S3 store."""


@retention_grp.command("extend")
@click.argument("ref")
@click.option("--until", "until", required=True, metavar="DATE", help="New retain-until date (never shortened).")
@click.option("--lock-mode", type=click.Choice(["governance", "compliance"], case_sensitive=False),
              help="Mode for objects (default: the archive's recorded mode).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def retention_extend_cmd(c: Ctx, ref: str, until: str, lock_mode: str | None, as_json: bool) -> None:
    """Extend the lock of every object of an archive (chunks, manifest, signatures) to DATE."""
    with c.repo() as repo:
        res = api.extend_retention(ref, until=until, lock_mode=lock_mode, repo=repo)
    if as_json:
        emit({"ok": True, **res})
    else:
        click.echo(f"{res['id']}: {res['objects']} objects locked ({res['mode']}) until at least {res['retain_until']}")


@cli.group("key")
def key_group() -> None:
    """Custodian keys: split, combine, rotate."""


def _read_passphrase(path: str | None) -> str | None:
    """The first line of a passphrase file (never a flag value: argv is visible to every user)."""
    if path is None:
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline().rstrip("\r\n")


@key_group.command("split")
@click.argument("identity", type=click.Path(exists=True, dir_okay=False))
@click.option("--shares", type=int, required=True, help="Number of custodians (share sheets), at most 16.")
@click.option("--threshold", type=int, required=True, help="How many sheets restore the key (at least 2).")
@click.option("--out-dir", type=click.Path(exists=True, file_okay=False), default=".", show_default=True,
              help="Directory for the sheets (each new, mode 0600; nothing is overwritten).")
@click.option("--passphrase-file", type=click.Path(exists=True, dir_okay=False),
              help="Also protect the split with the passphrase on this file's first line (SLIP-39).")
@click.option("--json", "as_json", is_flag=True)
def key_split_cmd(identity: str, shares: int, threshold: int, out_dir: str, passphrase_file: str | None,
                  as_json: bool) -> None:
    """Split the age identity in IDENTITY (as age-keygen writes it) into SLIP-39 share sheets,
    one per custodian: any --threshold of them restore it, fewer reveal nothing."""
    res = api.key_split(identity, shares=shares, threshold=threshold, out_dir=out_dir,
                        passphrase=_read_passphrase(passphrase_file))
    if as_json:
        emit(res.to_dict())
    else:
        click.echo(printable(f"split {res.split_id}: {res.shares} share sheets, any {res.threshold} restore "
                             f"{res.public_key}"))
        for p in res.files:
            click.echo(printable(f"  {p}"))


@key_group.command("combine")
@click.argument("shares", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(), help="Write the restored identity here (new file, mode 0600); "
                                               "default: print it.")
@click.option("--passphrase-file", type=click.Path(exists=True, dir_okay=False),
              help="The split's passphrase, on this file's first line.")
@click.option("--json", "as_json", is_flag=True)
def key_combine_cmd(shares: tuple[str, ...], out: str | None, passphrase_file: str | None, as_json: bool) -> None:
    """Restore an age identity from custodians' share sheets (or files of their words).
    Refuses too few shares, duplicates, shares of different splits and corrupt words."""
    res = api.key_combine(shares, out=out, passphrase=_read_passphrase(passphrase_file))
    if as_json:
        emit(res.to_dict())
        return
    who = ", ".join(map(str, res.key.custodians))
    if res.out is None:
        click.echo(res.key.file_text(), nl=False)
        click.echo(f"restored {res.key.identity.public_key} from custodians {who}", err=True)
    else:
        click.echo(printable(f"restored {res.key.identity.public_key} from custodians {who} into {res.out}"))


@key_group.command("rotate")
@click.option("--add", multiple=True, metavar="RECIPIENT", help="An age recipient to add (repeatable).")
@click.option("--remove", multiple=True, metavar="RECIPIENT", help="A recipient to remove (repeatable).")
@click.option("--identity", "identity", multiple=True, type=click.Path(), metavar="FILE", required=True,
              help="A custodian identity that opens the current keys (repeatable).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def key_rotate_cmd(c: Ctx, add: tuple[str, ...], remove: tuple[str, ...], identity: tuple[str, ...],
                   as_json: bool) -> None:
    """Re-wrap a sealed store's key objects (new objects, never chunks) to the recipients
    plus --add minus --remove; the newest generation wins."""
    if not add and not remove:
        raise UsageError("give --add and/or --remove")
    c.identities = identity
    with c.repo(read_only=True) as repo:
        res = api.rotate_keys(add=add, remove=remove, repo=repo)
    if as_json:
        emit({"ok": True, **res})
    else:
        click.echo(f"key generation {res['generation']}: {res['run_keys']} run key(s) and the address key re-wrapped "
                   f"to {len(res['recipients'])} recipient(s)")


def fail(message: str, code: int, as_json: bool, kind: str = "error", **fields: Any) -> None:
    """One line on stderr; with --json also one JSON document on stdout; then exit."""
    click.echo(f"archiver: {'' if kind == 'internal' else 'error: '}{printable(message)}", err=True)
    try:
        if as_json:
            emit({"ok": False, "error": message, "kind": kind, "exit_code": code, **fields})
        if sys.stdout is not None:
            sys.stdout.flush()  # what stdout still holds goes now, or cannot go at all
    except OSError:  # stdout itself fails (a full disk): the line on stderr is all there can be
        _drop_stdout()
    sys.exit(code)


def _drop_stdout() -> None:
    """Send what stdout still holds, and anything written after, to the null device: stdout
    failed a write, and the exit's flush of it would fail again with a traceback."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        finally:
            os.close(null)
    except (OSError, AttributeError, ValueError):  # no stdout descriptor: nothing is flushed to one
        pass


def _fields(err: ArchiverError) -> dict[str, Any]:
    """The public, JSON-able fields an error carries (path, chunk, option, ...)."""
    return {k: v for k, v in vars(err).items()
            if not k.startswith("_") and isinstance(v, (str, int, float, bool, type(None)))}


def _kind(err: BaseException) -> str:
    name = type(err).__name__.removesuffix("Error") or "Archiver"
    return "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-")


def _one_blas_thread() -> None:
    """numpy's OpenBLAS starts a thread per extra core as numpy is imported, and they spin
    for a while, taking CPU from the first chunks of an archive (bench/RESULTS.md, branch
    wall). archiver never multiplies matrices (numpy only
    splits, merges and compares byte planes), so one thread, unless the user chose a number.
    Only for a process that ends with this command: an embedding program keeps its BLAS."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


# A young collection after this many new container objects (the interpreter's default: 700).
YOUNG_COLLECTION_AFTER = 10_000


def _collect_less() -> None:
    """A command is one process whose objects mostly live until it ends (the modules, the
    scan's sources, the manifest's entries), so the generational collector would walk them
    again and again for little garbage (measurements: bench/RESULTS.md, branch wall). The
    objects of the modules loaded so far are frozen out of its reach, and a young collection
    waits for YOUNG_COLLECTION_AFTER new container objects. Only for a process that ends
    with this command (so an archive run's end may undo the freeze: archiver.heap)."""
    import gc
    from archiver import heap
    heap.command_freeze()
    gc.set_threshold(YOUNG_COLLECTION_AFTER, *gc.get_threshold()[1:])


def _end_without_collecting() -> None:
    """At exit, freeze every object out of the cyclic garbage collector's reach before the
    interpreter's final collections: they would walk every object of the process (serial
    time after the work is done, part of every command's wall time) only to free memory the
    OS takes back anyway. Registered first, so it runs after the other exit
    handlers; files are written with explicit fsync and close, and std streams are flushed
    by the interpreter regardless. Only for a process that ends with this command, never for
    a caller of `main(argv)` (tests, embedding)."""
    import atexit
    import gc
    atexit.register(gc.freeze)


def _end_process(code: object) -> None:
    """End the process now with exit status `code` (None or an int; anything else returns and
    the interpreter words it as usual), once it has done what the interpreter's own exit does
    before it tears down: join the non-daemon threads (and stop idle thread pools), run the
    exit handlers (multiprocessing's stop the worker processes), flush stdout and stderr.
    What is skipped is the teardown itself, every module and object freed one by one (a few
    ms of CPU and more of wall after the last byte is written; bench/RESULTS.md, branch
    bigwall4): files are written with explicit fsync and close, never left to it. A flush
    that fails (a closed pipe) returns too, so the interpreter reports it as it always did.
    A Ctrl-C while the threads are joined, the exit handlers run or stdout is written out ends
    it with status 130 and no traceback (the exit handlers after an interrupted one still run)."""
    import atexit
    import threading
    shutdown = getattr(threading, "_shutdown", None)  # what CPython's exit runs first
    if (code is not None and type(code) is not int) or shutdown is None:
        return
    try:
        shutdown()
    except KeyboardInterrupt:
        code = 130
    interrupted: list[bool] = []
    words = sys.unraisablehook  # how an exit handler's error is reported (atexit runs the others after it)

    def hook(u: Any) -> None:
        if u.exc_type is not None and issubclass(u.exc_type, KeyboardInterrupt):
            interrupted.append(True)  # a Ctrl-C in an exit handler: status 130, no traceback
        else:
            words(u)
    sys.unraisablehook = hook
    try:
        atexit._run_exitfuncs()
    finally:
        sys.unraisablehook = words
    if interrupted:
        code = 130
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except KeyboardInterrupt:  # a Ctrl-C while a slow reader takes the output: what is left is not waited for
        code = 130
    except BaseException:  # noqa: BLE001 - the interpreter's exit reports it
        return
    os._exit(code or 0)


def main(argv: list[str] | None = None, *, end_process: bool = True) -> None:
    """Entry point: map every failure to one line and an exit code. As the process's own
    entry point (`argv` None, called by the program's top level: the console script, `python
    -m archiver.cli`) the process ends here once the command is done (`_end_process`);
    `end_process=False` returns (raises SystemExit) instead, for a caller that goes on after
    the command (a timeline in bench/), as does a program that runs the module itself
    (`python -m cProfile -m archiver.cli`: `_the_programs_top_level`)."""
    if argv is None and end_process and _the_programs_top_level(sys._getframe(1)):
        try:
            _command(None)
        except SystemExit as e:
            _end_process(e.code)
            raise
        _end_process(None)
        return
    _command(argv)


def _the_programs_top_level(caller: Any) -> bool:
    """Whether `caller` (main's caller's frame) is the top level of the program itself: the
    `__main__` module's code (a console script, `python -m archiver.cli`, `python -c`) with
    nothing below it but the interpreter, or runpy's start of `python -m`. A program that runs
    the module and goes on after it (`python -m cProfile -o P -m archiver.cli`, trace, pdb:
    runpy.run_module, exec) has frames of its own below: it writes its results once the
    module returns, so the process is not ended under it."""
    if caller is None or caller.f_code.co_name != "<module>" or caller.f_globals.get("__name__") != "__main__":
        return False
    below = caller.f_back
    while below is not None:
        if below.f_globals.get("__name__") != "runpy" or below.f_code.co_name not in ("_run_code",
                                                                                       "_run_module_as_main"):
            return False
        below = below.f_back
    return True


def _command(argv: list[str] | None) -> None:
    """`main` but for how the process ends."""
    if argv is None:  # the process's own entry point (console script, python -m): it ends when this returns
        _one_blas_thread()
        _collect_less()
        _end_without_collecting()
    debug = os.environ.get("ARCHIVER_DEBUG") == "1"
    args = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in args
    malloc.tune()
    try:
        cli.main(args=args, prog_name="archiver", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:  # click's usage errors, as one line like every other error
        hint = " (see --help)" if isinstance(e, click.UsageError) else ""
        fail(f"{' '.join(e.format_message().split())}{hint}", e.exit_code, as_json, "usage")
    except click.exceptions.Abort:
        fail("aborted", 130, as_json, "interrupted")
    except ArchiverError as e:
        if debug:
            raise
        fail(describe(e), e.exit_code, as_json, _kind(e), **_fields(e))
    except KeyboardInterrupt:
        fail("interrupted; nothing partial was recorded", 130, as_json, "interrupted")
    except OSError as e:
        if debug:
            raise
        where = f"{e.filename} " if e.filename else ""
        fail(f"{where}{e.strerror or e}", 1, as_json, "os")
    except Exception as e:  # last resort: still one line, with a way to see more
        if debug:
            raise
        fail(f"internal error: {type(e).__name__}: {e} (ARCHIVER_DEBUG=1 for a traceback)", 1, as_json, "internal")


if __name__ == "__main__":
    main()
