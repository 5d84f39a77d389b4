"""Key escrow: split an age X25519 identity into SLIP-39 shares for custodians (any
`threshold` of `shares` restore it; fewer reveal nothing) and combine them back.

SLIP-39 is a published standard with a reference implementation (`shamir-mnemonic`),
so a share sheet stays usable in decades without archiver. The 32 raw secret bytes are
split; the sheet also records the public key they restore, so a combine that yields any
other key (a wrong passphrase, an edited word that still passes the checksum) is refused
instead of silently producing a useless key. Nothing here touches a store."""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pyrage
import shamir_mnemonic
from shamir_mnemonic import MnemonicError
from shamir_mnemonic.share import Share
from shamir_mnemonic.wordlist import WORD_INDEX_MAP

from archiver import bech32
from archiver.errors import InvalidOptionError, UsageError
from archiver.fileio import write_all

FORMAT = "archiver-key-share/1"
SECRET_PREFIX = "AGE-SECRET-KEY-"
MAX_SHARES = 16  # SLIP-39 encodes the member count in 4 bits
MAX_FILE_BYTES = 64 * 1024  # a share sheet is ~2 KB; anything far larger is not one
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class EscrowError(UsageError):
    """Key escrow refused its input (exit 2): nothing was written."""


class IdentityFileError(EscrowError):
    """The identity to split is not exactly one age X25519 identity."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class CorruptShareError(EscrowError):
    """A share cannot be read: a word outside the SLIP-39 list, a failed checksum, a
    header that contradicts the words, or shares that do not fit together."""

    def __init__(self, share: str, reason: str) -> None:
        super().__init__(f"{share}: {reason}")
        self.share = share
        self.reason = reason


class TooFewSharesError(EscrowError):
    """Fewer distinct shares than the split's threshold."""

    def __init__(self, needed: int, given: int) -> None:
        super().__init__(f"{given} share(s) given, {needed} needed to restore the key "
                         f"(bring {needed - given} more custodian share(s))")
        self.needed = needed
        self.given = given


class MixedSplitError(EscrowError):
    """Shares that come from different splits (different SLIP-39 ids or keys) never combine."""

    def __init__(self, splits: list[str]) -> None:
        super().__init__(f"the shares come from {len(splits)} different splits ({', '.join(splits)}); "
                         "use shares of one split only")
        self.splits = ", ".join(splits)


class DuplicateShareError(EscrowError):
    """The same custodian's share was given twice."""

    def __init__(self, custodian: int, shares: list[str]) -> None:
        super().__init__(f"custodian {custodian}'s share was given twice ({' and '.join(shares)}); "
                         "each custodian's share counts once")
        self.custodian = custodian
        self.shares = " and ".join(shares)


class KeyMismatchError(EscrowError):
    """The combined secret is not the key the shares were made from."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"the shares combine to public key {got}, but they record {expected} "
                         "(a wrong passphrase, or an edited share)")
        self.expected = expected
        self.got = got


class PassphraseError(EscrowError):
    """A passphrase was needed and not given, or cannot be used by SLIP-39."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AgeIdentity:
    """An age X25519 identity: its text, raw secret bytes and public key (recipient)."""

    text: str
    secret: bytes = field(repr=False)
    public_key: str

    @classmethod
    def from_secret(cls, secret: bytes) -> AgeIdentity:
        text = bech32.encode(SECRET_PREFIX, secret).upper()
        return cls(text, secret, str(pyrage.x25519.Identity.from_str(text).to_public()))

    def file_text(self, comment: str) -> str:
        """The identity as an age-keygen style file (comments, then the key)."""
        return f"# {comment}\n# public key: {self.public_key}\n{self.text}\n"


def parse_identity(text: str, source: str = "identity") -> AgeIdentity:
    """The one age X25519 identity in `text` (blank lines and `#` comments allowed, as
    age-keygen writes them); a `# public key:` comment must match the key."""
    keys, claimed = [], []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            m = re.match(r"#\s*public key:\s*(\S+)", line)
            if m:
                claimed.append(m.group(1))
        elif line:
            if not line.upper().startswith(SECRET_PREFIX + "1"):
                raise IdentityFileError(source, f"line {n} is not an age identity (AGE-SECRET-KEY-1...)")
            keys.append(line)
    if len(keys) != 1:
        raise IdentityFileError(source, f"holds {len(keys)} age identities; exactly one can be split")
    try:
        identity = pyrage.x25519.Identity.from_str(keys[0])
        hrp, secret = bech32.decode(keys[0])
    except (pyrage.IdentityError, bech32.Bech32Error, ValueError) as e:
        raise IdentityFileError(source, f"not a valid age X25519 identity ({e})") from None
    if hrp != SECRET_PREFIX.lower() or len(secret) != 32:
        raise IdentityFileError(source, "not a valid age X25519 identity")
    public = str(identity.to_public())
    if any(c != public for c in claimed):
        raise IdentityFileError(source, f"its '# public key:' comment does not match the key ({public})")
    return AgeIdentity(keys[0].upper(), secret, public)


@dataclass(frozen=True)
class ShareRecord:
    """One custodian's share: the SLIP-39 words plus what the sheet says about them."""

    custodian: int  # 1-based; SLIP-39 member index + 1
    shares: int  # 0: unknown (bare words do not say)
    threshold: int
    split_id: int  # the SLIP-39 identifier, common to every share of one split
    public_key: str | None  # the recipient the split restores (None: bare words)
    passphrase: bool | None  # whether the split needs a passphrase (None: unknown)
    words: tuple[str, ...]

    @property
    def mnemonic(self) -> str:
        return " ".join(self.words)

    def file_name(self) -> str:
        return f"key-share-{self.split_id:05d}-{self.custodian}-of-{self.shares}.txt"

    def text(self) -> str:
        """The printable sheet for one custodian."""
        title = f"archiver key share: custodian {self.custodian} of {self.shares}"
        cols, rows = 3, -(-len(self.words) // 3)
        grid = []
        for r in range(rows):
            cells = [f"{i + 1:3d} {self.words[i]:<10}" for i in range(r, len(self.words), rows)][:cols]
            grid.append("  ".join(cells).rstrip())
        need = "a passphrase, told to you separately" if self.passphrase else "none"
        return "\n".join([
            title, "=" * len(title), "",
            "Keep this sheet secret and offline. Any " f"{self.threshold} of the {self.shares} custodians' sheets",
            "restore the age identity whose public key is below; fewer reveal nothing about it.", "",
            f"format:      {FORMAT}",
            f"custodian:   {self.custodian} of {self.shares}",
            f"threshold:   {self.threshold}",
            f"split:       {self.split_id} (every sheet of this split begins with the words "
            f"\"{' '.join(self.words[:2])}\")",
            f"public key:  {self.public_key}",
            f"passphrase:  {'required' if self.passphrase else 'none'}", "",
            f"SLIP-39 words ({len(self.words)}):", *grid, "",
            f"To restore the key, {self.threshold} custodians bring their sheets (or type their words into a",
            "text file each) and run:",
            f"    archiver key combine SHEET1 SHEET2 ... --out identity.txt   (passphrase: {need})",
            "Without archiver: any SLIP-39 implementation (e.g. `shamir recover`) recovers the",
            "32-byte X25519 secret; the age identity is its bech32 encoding under the prefix",
            f"\"{SECRET_PREFIX.lower()}\", upper-cased. Check that it matches the public key above.", "",
        ])


_HEADER = re.compile(r"^(format|custodian|threshold|split|public key|passphrase):\s*(.*?)\s*$")
_WORDS = re.compile(r"^SLIP-39 words\b", re.IGNORECASE)


def _ordered_words(tokens: list[str], name: str) -> list[str]:
    """The words in order: numbered ("12 avoid", as the sheet's columns print them) by
    their numbers, which must run 1..n once each; unnumbered in the order given."""
    numbered: dict[int, str] = {}
    plain: list[str] = []
    number: int | None = None
    for tok in tokens:
        if tok.isascii() and tok.isdigit():
            if number is not None or len(tok) > 2 or int(tok) in numbered or not 1 <= int(tok) <= 99:
                raise CorruptShareError(name, f"word number {tok[:8]} is repeated, out of range or has no word")
            number = int(tok)
            continue
        if not tok.isalpha() or not tok.isascii():
            raise CorruptShareError(name, f"{tok[:20]!r} is not a SLIP-39 word")
        if number is None:
            plain.append(tok.lower())
        else:
            numbered[number] = tok.lower()
            number = None
    if numbered and plain or number is not None:
        raise CorruptShareError(name, "some words are numbered and some are not")
    if numbered and sorted(numbered) != list(range(1, len(numbered) + 1)):
        missing = sorted(set(range(1, max(numbered) + 1)) - set(numbered))
        raise CorruptShareError(name, f"word(s) {', '.join(map(str, missing[:5]))} missing")
    words = [numbered[i] for i in sorted(numbered)] if numbered else plain
    for i, word in enumerate(words, 1):
        if word not in WORD_INDEX_MAP:
            raise CorruptShareError(name, f"word {i} ({word[:20]!r}) is not a SLIP-39 word")
    return words


def parse_share(text: str, name: str = "share") -> ShareRecord:
    """A share sheet written by `ShareRecord.text`, or a file of bare SLIP-39 words
    (numbered or not). Header fields are checked against the words, never trusted over them."""
    header: dict[str, str] = {}
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _WORDS.match(line.strip())), None)
    if start is None:
        tokens = text.split()
    else:
        for line in lines[:start]:
            m = _HEADER.match(line.strip())
            if m:
                header[m.group(1)] = m.group(2)
        tokens = []
        for line in lines[start + 1:]:
            if not line.strip():
                break
            tokens += line.split()
    words = _ordered_words(tokens, name)
    if header.get("format", FORMAT) != FORMAT:
        raise CorruptShareError(name, f"unknown share format {header['format'][:40]!r} (this archiver reads {FORMAT})")
    if not words:
        raise CorruptShareError(name, "holds no SLIP-39 words")
    try:
        share = Share.from_mnemonic(" ".join(words))
    except MnemonicError as e:
        raise CorruptShareError(name, f"not a valid SLIP-39 share: {str(e).rstrip('.')}") from None
    if share.group_count != 1 or share.group_threshold != 1:
        raise CorruptShareError(name, "a multi-group SLIP-39 share; archiver splits into one group only")
    custodian, _, shares = header.get("custodian", "").partition(" of ")
    claims = {"custodian": (custodian, share.index + 1), "threshold": (header.get("threshold"), share.member_threshold),
              "split": ((header.get("split") or "").partition(" ")[0], share.identifier)}
    for key, (said, words_say) in claims.items():
        if said and said != str(words_say):
            raise CorruptShareError(name, f"the sheet says {key} {said[:20]}, its words say {words_say}")
    public = header.get("public key") or None
    if public is not None:
        try:
            pyrage.x25519.Recipient.from_str(public)
        except (pyrage.RecipientError, ValueError):
            raise CorruptShareError(name, f"its public key {public[:80]!r} is not an age recipient") from None
    passphrase = {"required": True, "none": False}.get(header.get("passphrase", ""))
    count = int(shares) if shares.isascii() and shares.isdigit() and len(shares) <= 2 else 0
    return ShareRecord(share.index + 1, count, share.member_threshold,
                       share.identifier, public, passphrase, tuple(words))


def _passphrase(passphrase: str | bytes | None) -> bytes:
    raw = passphrase.encode("utf-8", "replace") if isinstance(passphrase, str) else (passphrase or b"")
    if not all(32 <= c <= 126 for c in raw):
        raise PassphraseError("a SLIP-39 passphrase may hold only printable ASCII characters")
    return raw


def split(identity_text: str, shares: int, threshold: int, passphrase: str | bytes | None = None,
          source: str = "identity") -> list[ShareRecord]:
    """Split the one age identity in `identity_text` into `shares` SLIP-39 shares, any
    `threshold` of which restore it. With a passphrase, combining also needs it."""
    if not 2 <= shares <= MAX_SHARES:
        raise InvalidOptionError("shares", f"must be between 2 and {MAX_SHARES}, got {shares}")
    if threshold < 2:
        raise InvalidOptionError("threshold", f"must be at least 2, got {threshold} (one share alone would be "
                                              "a plain copy of the key)")
    if threshold > shares:
        raise InvalidOptionError("threshold", f"must not exceed the number of shares ({shares}), got {threshold}")
    identity = parse_identity(identity_text, source)
    secret = _passphrase(passphrase)
    groups = shamir_mnemonic.generate_mnemonics(1, [(threshold, shares)], identity.secret, secret)
    out = []
    for mnemonic in groups[0]:
        share = Share.from_mnemonic(mnemonic)
        out.append(ShareRecord(share.index + 1, shares, threshold, share.identifier, identity.public_key,
                               bool(secret), tuple(mnemonic.split())))
    return sorted(out, key=lambda r: r.custodian)


@dataclass(frozen=True)
class CombinedKey:
    """The identity restored from shares, and which custodians' shares were used."""

    identity: AgeIdentity
    split_id: int
    custodians: list[int]

    def file_text(self) -> str:
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        who = ", ".join(map(str, self.custodians))
        return self.identity.file_text(f"restored: {when} by archiver key combine from split {self.split_id}, "
                                       f"custodians {who}")


def combine(share_texts: Sequence[str], passphrase: str | bytes | None = None,
            names: Sequence[str] | None = None) -> CombinedKey:
    """The identity that `share_texts` (sheets or bare words) restore. Refuses too few
    shares, duplicates, mixed splits and corrupt words; every share beyond the threshold
    is also checked to restore the same secret, and the result must be the recorded key."""
    names = list(names) if names is not None else [f"share {i + 1}" for i in range(len(share_texts))]
    records = [parse_share(text, name) for text, name in zip(share_texts, names)]
    if not records:
        raise EscrowError("no shares given")
    ids = sorted({r.split_id for r in records})
    keys = sorted({r.public_key for r in records if r.public_key})
    if len(ids) > 1:
        raise MixedSplitError([f"split {i}" for i in ids])
    if len(keys) > 1:
        raise MixedSplitError([f"key {k}" for k in keys])
    if len({r.threshold for r in records}) > 1:
        raise MixedSplitError([f"threshold {t}" for t in sorted({r.threshold for r in records})])
    by_custodian: dict[int, tuple[str, ShareRecord]] = {}
    for name, record in zip(names, records):
        if record.custodian in by_custodian:
            raise DuplicateShareError(record.custodian, [by_custodian[record.custodian][0], name])
        by_custodian[record.custodian] = (name, record)
    unique = [by_custodian[c] for c in sorted(by_custodian)]
    threshold = records[0].threshold
    if len(unique) < threshold:
        raise TooFewSharesError(threshold, len(unique))
    if any(r.passphrase for r in records) and not passphrase:
        raise PassphraseError("the shares were split with a passphrase and none was given")
    secret = _passphrase(passphrase)

    def restore(subset: Sequence[tuple[str, ShareRecord]]) -> bytes:
        try:
            return shamir_mnemonic.combine_mnemonics([r.mnemonic for _, r in subset], secret)
        except MnemonicError as e:
            raise CorruptShareError(" + ".join(n for n, _ in subset),
                                    f"the shares do not fit together: {str(e).rstrip('.')}") from None

    base = unique[:threshold]
    master = restore(base)
    for extra in unique[threshold:]:  # every share given must agree, not just the first few
        if restore(base[:threshold - 1] + [extra]) != master:
            raise CorruptShareError(extra[0], "restores a different secret than the other shares")
    if len(master) != 32:
        raise CorruptShareError(base[0][0], f"the split holds {len(master)} bytes, not an age X25519 key (32)")
    identity = AgeIdentity.from_secret(master)
    for _, record in unique:
        if record.public_key and record.public_key != identity.public_key:
            raise KeyMismatchError(record.public_key, identity.public_key)
    return CombinedKey(identity, records[0].split_id, [r.custodian for _, r in unique])


def read_text(path: str | os.PathLike, refuse: type[IdentityFileError] | type[CorruptShareError]) -> str:
    """A small text file (a share sheet or an identity); binary or huge ones are refused."""
    p = Path(path)
    with open(p, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise refuse(str(p), f"larger than {MAX_FILE_BYTES} bytes, so not a key or share file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse(str(p), "not a UTF-8 text file, so not a key or share file") from None


def create_private(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a new file, mode 0600, refusing to overwrite anything (O_EXCL)."""
    p = Path(path)
    try:
        fd = os.open(p, _CREATE, 0o600)
    except FileExistsError:
        raise EscrowError(f"{p}: already exists; refusing to overwrite it") from None
    except OSError as e:  # no such directory, not writable: nothing was created
        raise EscrowError(f"{p}: cannot create it ({e.strerror or e})") from None
    try:
        write_all(fd, text.encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        p.unlink(missing_ok=True)
        raise
    os.close(fd)
    return p


def write_shares(records: Sequence[ShareRecord], out_dir: str | os.PathLike) -> list[Path]:
    """One sheet per custodian in `out_dir`, each 0600 and new; if any cannot be created,
    the ones already written are removed, so a split is written whole or not at all."""
    directory = Path(out_dir)
    if not directory.is_dir():
        raise EscrowError(f"{directory}: not a directory")
    written: list[Path] = []
    try:
        for record in records:
            written.append(create_private(directory / record.file_name(), record.text()))
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return written


@dataclass(frozen=True)
class SplitResult:
    """What `split_files` wrote: one sheet per custodian."""

    public_key: str
    split_id: int
    shares: int
    threshold: int
    files: list[Path]

    def to_dict(self) -> dict:
        return {"ok": True, "public_key": self.public_key, "split": self.split_id, "shares": self.shares,
                "threshold": self.threshold, "files": [str(p) for p in self.files]}


@dataclass(frozen=True)
class CombineResult:
    """What `combine_files` restored, and where it wrote the identity (None: not written)."""

    key: CombinedKey
    out: Path | None

    def to_dict(self) -> dict:
        d = {"ok": True, "public_key": self.key.identity.public_key, "split": self.key.split_id,
             "custodians": self.key.custodians, "out": str(self.out) if self.out else None}
        if self.out is None:
            d["identity"] = self.key.identity.text
        return d


def split_files(identity: str | os.PathLike, shares: int, threshold: int, out_dir: str | os.PathLike = ".",
                passphrase: str | bytes | None = None) -> SplitResult:
    """Split the identity file at `identity` into sheets written to `out_dir`."""
    records = split(read_text(identity, IdentityFileError), shares, threshold, passphrase, source=str(identity))
    files = write_shares(records, out_dir)
    return SplitResult(records[0].public_key or "", records[0].split_id, shares, threshold, files)


def combine_files(paths: Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
                  passphrase: str | bytes | None = None) -> CombineResult:
    """Combine the sheets at `paths`; write the identity to `out` (new, 0600) if given."""
    texts = [read_text(p, CorruptShareError) for p in paths]
    key = combine(texts, passphrase, names=[str(p) for p in paths])
    return CombineResult(key, create_private(out, key.file_text()) if out is not None else None)
