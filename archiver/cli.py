"""The command line: parse, call the API, render (human text or one JSON document).

Errors are one line on stderr with a non-zero exit (2 for usage); tracebacks are shown
only with ARCHIVER_DEBUG=1. Progress goes to stderr, only on a terminal, never with --json."""
from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any

import click

from archiver import api, malloc
from archiver.checker import check_sample
from archiver.errors import ArchiverError, EmptyCatalogError, InvalidOptionError, UsageError
from archiver.progress import Progress, human_bytes
from archiver.repository import Repository
from archiver.settings import Settings
from archiver.showpkg import package_lines
from manifests.fields import model_summary
from manifests.paths import BIDI_CONTROLS


class Ctx:
    """The group's options, resolved into Settings once (flags, then the environment)."""

    def __init__(self, store: str | None, catalog: str | None) -> None:
        self.store, self.catalog = store, catalog

    def repo(self, create: bool = False, read_only: bool = False) -> Repository:
        return Repository.open(Settings.resolve(self.store, self.catalog), create=create, read_only=read_only)


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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def archive_cmd(c: Ctx, paths: tuple[str, ...], name: str, label: str | None, meta: tuple[str, ...],
                sign_key: str | None, trust_verified_within: str | None, profile: str | None,
                meta_file: str | None, attach: tuple[str, ...], dereference: bool, as_json: bool) -> None:
    """Archive files and directories; prints the manifest id."""
    meta_d = _parse_meta(meta)
    attachments = _parse_attach(attach)
    block = api.make_profile_block(profile, meta_file)  # refused (exit 2, the first bad field) before any scan
    key = api.signing_key(sign_key)  # refused before the store is touched
    trust = None if trust_verified_within is None else parse_duration(trust_verified_within,
                                                                       "trust_verified_within")
    with c.repo(create=True) as repo:
        res = api.archive(paths, name=name, label=label, meta=meta_d, sign_key=key, repo=repo,
                          trust_verified_within=trust, progress=Progress.for_terminal("archive", quiet=as_json),
                          profile_block=block, attach=attachments, dereference=dereference)
    if as_json:
        emit(res.to_dict())
        return
    click.echo(res.id)
    click.echo(f"{res.files} files, {human_bytes(res.bytes_in)} in, {human_bytes(res.bytes_stored)} stored "
               f"({human_bytes(res.new_bytes_stored)} new in {res.new_chunks} of {res.chunks} chunks), "
               f"{res.seconds:.1f}s", err=True)
    if res.repaired_chunks:
        click.echo(f"repaired {res.repaired_chunks} damaged chunk(s) in the store from the source "
                   f"(the damaged objects are kept under quarantine/ and each repair is in the catalog audit log)", err=True)


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
        emit({"id": mid, "manifest": m.to_dict(), "summary": model_summary(m)})
        return
    lines = [f"id:      {mid}", f"name:    {m.name}", f"label:   {m.label or '-'}", f"parent:  {m.parent or '-'}"]
    lines += [f"meta:    {k}={v}" for k, v in sorted(m.meta.items())]
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
@click.option("--trust-key", multiple=True, metavar="PUBKEY",
              help="Require a signature by this public key (file or hex); repeatable.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def verify_cmd(c: Ctx, refs: tuple[str, ...], all_: bool, deep: bool, sample: float | None,
               trust_key: tuple[str, ...], as_json: bool) -> None:
    """Prove archives complete and uncorrupted. Exit 0 all good, 1 problems found, 2 usage.
    REF as for `show` (id:PREFIX and name:NAME[@LABEL] are never ambiguous)."""
    if bool(refs) == all_:
        raise UsageError("give REF... or --all (not both)")
    check_sample(sample)  # usage errors before the store is opened
    trusted = api.trusted_keys(trust_key)
    with c.repo(read_only=True) as repo:
        rep = api.verify(refs, all_archives=all_, deep=deep, sample=sample, trust_keys=trusted, repo=repo,
                         progress=Progress.for_terminal("verify", quiet=as_json))
    if rep.audit_error is not None:
        click.echo(f"archiver: warning: this verify is not in the catalog's audit log: {rep.audit_error}", err=True)
    if as_json:
        emit(rep.to_dict())
    else:
        for p in rep.problems:
            click.echo(printable(p.line()))
        status = "OK" if rep.ok else f"FAILED: {len(rep.problems)} problem(s)"
        click.echo(f"{status} — {rep.mode} verify of {len(rep.manifests)} archive(s): {rep.chunks_checked} chunks "
                   f"listed, {rep.chunks_read} read ({human_bytes(rep.bytes_read)}), {rep.files_hashed} files "
                   f"hashed, {rep.seconds:.1f}s")
    sys.exit(0 if rep.ok else 1)


@cli.command("restore")
@click.argument("ref")
@click.argument("dest", type=click.Path())
@click.option("--include", multiple=True, metavar="GLOB", help="Only paths matching GLOB (repeatable).")
@click.option("--force", is_flag=True, help="Restore into a non-empty DEST, replacing files.")
@click.option("--trust-key", multiple=True, metavar="PUBKEY",
              help="Refuse unless signed by this public key (file or hex); repeatable.")
@click.option("--preserve-special-bits", is_flag=True,
              help="Keep setuid, setgid and sticky bits (dropped by default).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def restore_cmd(c: Ctx, ref: str, dest: str, include: tuple[str, ...], force: bool, trust_key: tuple[str, ...],
                preserve_special_bits: bool, as_json: bool) -> None:
    """Restore an archive into DEST, verifying every byte. REF as for `show`."""
    trusted = api.trusted_keys(trust_key)
    with c.repo() as repo:
        res = api.restore(ref, dest, include=include, force=force, trust_keys=trusted, repo=repo,
                          progress=Progress.for_terminal("restore", quiet=as_json),
                          preserve_special_bits=preserve_special_bits)
    if as_json:
        emit(res.to_dict())
    else:
        for p in res.problems:
            click.echo(printable(f"not restored: {p.path}: {p.line()}"), err=True)
        click.echo(printable(f"{'restored' if res.ok else 'FAILED'}: {res.files} files, {human_bytes(res.bytes)} "
                             f"into {res.dest} in {res.seconds:.1f}s"), err=not res.ok)
    sys.exit(0 if res.ok else 1)


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
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def rebuild_cmd(c: Ctx, as_json: bool) -> None:
    """Recreate the catalog from the manifests in the store. A bad manifest is skipped and
    reported; exit 1 if any was."""
    with c.repo() as repo:
        res = api.rebuild_catalog(repo=repo)
    if as_json:
        emit(res.to_dict())
    else:
        for p in res.problems:
            click.echo(f"skipped: {p.line()}", err=True)
        skipped = f", {len(res.problems)} bad manifest(s) skipped" if res.problems else ""
        click.echo(f"catalog rebuilt: {len(res.added)} manifest(s) added of {res.manifests} in the store{skipped}",
                   err=not res.ok)
    sys.exit(0 if res.ok else 1)


def fail(message: str, code: int, as_json: bool, kind: str = "error", **fields: Any) -> None:
    """One line on stderr; with --json also one JSON document on stdout; then exit."""
    click.echo(f"archiver: {'' if kind == 'internal' else 'error: '}{printable(message)}", err=True)
    if as_json:
        emit({"ok": False, "error": message, "kind": kind, "exit_code": code, **fields})
    sys.exit(code)


def _fields(err: ArchiverError) -> dict[str, Any]:
    """The public, JSON-able fields an error carries (path, chunk, option, ...)."""
    return {k: v for k, v in vars(err).items()
            if not k.startswith("_") and isinstance(v, (str, int, float, bool, type(None)))}


def _kind(err: BaseException) -> str:
    name = type(err).__name__.removesuffix("Error") or "Archiver"
    return "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-")


def main(argv: list[str] | None = None) -> None:
    """Entry point: map every failure to one line and an exit code."""
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
