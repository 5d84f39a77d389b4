"""Key escrow (archiver/escrow.py and `archiver key split/combine`): any threshold of the
shares restore the same age identity, fewer are refused and the sheets do not hold the
secret, the restored identity decrypts what was encrypted to the original recipient
(pyrage and the real `age` binary), and hostile input is one line with exit 2."""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pyrage
import pytest

from archiver import bech32, escrow
from tests.helpers import run_cli

AGE = shutil.which("age")


@pytest.fixture(scope="module")
def identity() -> pyrage.x25519.Identity:
    return pyrage.x25519.Identity.generate()


@pytest.fixture(scope="module")
def identity_text(identity) -> str:
    """As age-keygen writes it: two comments, then the key."""
    return f"# created: 2026-01-01T00:00:00Z\n# public key: {identity.to_public()}\n{identity}\n"


@pytest.fixture(scope="module")
def records(identity_text) -> list[escrow.ShareRecord]:
    return escrow.split(identity_text, shares=5, threshold=3)


@pytest.fixture
def identity_file(tmp_path, identity_text) -> Path:
    p = tmp_path / "identity.txt"
    p.write_text(identity_text)
    return p


def _with_word(record: escrow.ShareRecord, index: int, word: str) -> str:
    """The record's sheet with word `index` (0-based) replaced."""
    words = list(record.words)
    words[index] = word
    return escrow.ShareRecord(**{**record.__dict__, "words": tuple(words)}).text()


def _one_line_exit_2(r, *needles: str) -> None:
    assert r.code == 2, (r.code, r.out, r.err)
    assert r.err.count("\n") == 1 and r.err.startswith("archiver: error: "), r.err
    assert "Traceback" not in r.err
    for n in needles:
        assert n in r.err, r.err


# --- library ---------------------------------------------------------------------------

def test_every_3_of_5_restore_the_same_identity(records, identity):
    assert [r.custodian for r in records] == [1, 2, 3, 4, 5]
    assert len({r.split_id for r in records}) == 1
    combos = list(itertools.combinations(records, 3))
    assert len(combos) == 10
    for combo in combos:
        key = escrow.combine([r.text() for r in combo])
        assert key.identity.text == str(identity)
        assert key.identity.public_key == str(identity.to_public())
        assert key.custodians == sorted(r.custodian for r in combo)


def test_more_than_threshold_all_used_and_checked(records, identity):
    key = escrow.combine([r.text() for r in reversed(records)])
    assert key.identity.text == str(identity) and key.custodians == [1, 2, 3, 4, 5]


def test_bare_words_combine_too(records, identity):
    """A custodian may type the words into a file: unnumbered, or numbered in any layout."""
    numbered = "\n".join(f"{i + 1} {w}" for i, w in reversed(list(enumerate(records[1].words))))
    key = escrow.combine([records[0].mnemonic, numbered, records[4].mnemonic.upper()])
    assert key.identity.text == str(identity)


@pytest.mark.parametrize("pair", list(itertools.combinations(range(5), 2)))
def test_two_shares_are_refused(records, pair):
    with pytest.raises(escrow.TooFewSharesError) as e:
        escrow.combine([records[i].text() for i in pair])
    assert (e.value.needed, e.value.given) == (3, 2)


def test_sheets_do_not_hold_the_secret(records, identity):
    """A sheet names the public key, never the secret in any of its encodings."""
    _, secret = bech32.decode(str(identity))
    forms = {str(identity), str(identity).lower(), secret.hex(), secret.hex().upper(), bech32.encode("x", secret)[2:-6]}
    for r in records:
        text = r.text()
        assert str(identity.to_public()) in text
        for form in forms:
            assert form not in text
        assert secret not in text.encode()


def test_each_split_is_fresh_randomness(identity_text, records):
    """Splitting the same key again shares no mnemonic with the first split, and the two
    splits' shares do not combine with each other (different split ids)."""
    again = escrow.split(identity_text, shares=5, threshold=3)
    assert {r.mnemonic for r in again}.isdisjoint({r.mnemonic for r in records})
    if again[0].split_id != records[0].split_id:  # 1 in 32768 chance they collide
        with pytest.raises(escrow.MixedSplitError):
            escrow.combine([records[0].text(), records[1].text(), again[2].text()])


def test_restored_identity_decrypts_for_the_original_recipient(records, identity):
    box = pyrage.encrypt(b"weights", [identity.to_public()])
    key = escrow.combine([r.text() for r in records[2:]])
    restored = pyrage.x25519.Identity.from_str(escrow.parse_identity(key.file_text()).text)
    assert pyrage.decrypt(box, [restored]) == b"weights"


def test_passphrase_needed_and_checked(identity_text, identity):
    recs = escrow.split(identity_text, shares=3, threshold=2, passphrase="correct horse")
    assert all(r.passphrase for r in recs) and "passphrase:  required" in recs[0].text()
    texts = [r.text() for r in recs[:2]]
    assert escrow.combine(texts, passphrase="correct horse").identity.text == str(identity)
    with pytest.raises(escrow.PassphraseError):
        escrow.combine(texts)
    with pytest.raises(escrow.KeyMismatchError) as e:  # SLIP-39 decrypts to another key: caught
        escrow.combine(texts, passphrase="wrong horse")
    assert e.value.expected == str(identity.to_public())
    with pytest.raises(escrow.PassphraseError):
        escrow.split(identity_text, shares=3, threshold=2, passphrase="caf\u00e9")


@pytest.mark.parametrize("shares,threshold,option", [(5, 1, "threshold"), (5, 6, "threshold"), (1, 1, "shares"),
                                                      (17, 3, "shares"), (0, 0, "shares")])
def test_bad_counts_name_their_parameter(identity_text, shares, threshold, option):
    with pytest.raises(escrow.InvalidOptionError) as e:
        escrow.split(identity_text, shares=shares, threshold=threshold)
    assert e.value.option == option


@pytest.mark.parametrize("text,reason", [
    ("", "0 age identities"),
    ("# only a comment\n", "0 age identities"),
    ("AGE-SECRET-KEY-1QQQQ\n", "not a valid"),
    ("hello\n", "line 1 is not an age identity"),
    ("age1dw6juqckq5dqzd5vu28ku96yzram60hgzf59l5vf4gpd3y0u49uq5j65h0\n", "line 1 is not"),
])
def test_bad_identity_refused(text, reason):
    with pytest.raises(escrow.IdentityFileError) as e:
        escrow.split(text, shares=3, threshold=2)
    assert reason in e.value.reason


def test_two_identities_or_a_lying_comment_refused(identity):
    other = pyrage.x25519.Identity.generate()
    with pytest.raises(escrow.IdentityFileError, match="2 age identities"):
        escrow.parse_identity(f"{identity}\n{other}\n")
    with pytest.raises(escrow.IdentityFileError, match="public key"):
        escrow.parse_identity(f"# public key: {other.to_public()}\n{identity}\n")


def test_flipped_bech32_character_refused(identity):
    text = str(identity)
    flipped = text[:-3] + ("Q" if text[-3] != "Q" else "P") + text[-2:]
    with pytest.raises(escrow.IdentityFileError):
        escrow.parse_identity(flipped)


def test_corrupt_word_duplicate_and_mixed(records, identity_text):
    swap = "academic" if records[2].words[10] != "academic" else "acid"  # a SLIP-39 word, wrong checksum
    bad = _with_word(records[2], 10, swap)
    with pytest.raises(escrow.CorruptShareError, match="checksum"):
        escrow.combine([records[0].text(), records[1].text(), bad])
    with pytest.raises(escrow.CorruptShareError, match="not a SLIP-39 word"):
        escrow.combine([records[0].text(), records[1].text(), _with_word(records[2], 5, "x7")])
    with pytest.raises(escrow.CorruptShareError, match="word 6 \\('zebra'\\) is not a SLIP-39 word"):  # not in the list
        escrow.combine([records[0].text(), records[1].text(), _with_word(records[2], 5, "zebra")])
    with pytest.raises(escrow.DuplicateShareError) as e:
        escrow.combine([records[0].text(), records[1].text(), records[1].text()])
    assert e.value.custodian == 2
    other = escrow.split(identity_text, shares=5, threshold=3)
    if other[0].split_id != records[0].split_id:
        with pytest.raises(escrow.MixedSplitError):
            escrow.combine([records[0].text(), records[1].text(), other[2].text(), other[3].text()])


def test_edited_header_contradicting_words_refused(records):
    text = records[0].text().replace("custodian:   1 of 5", "custodian:   4 of 5")
    with pytest.raises(escrow.CorruptShareError, match="custodian 4"):
        escrow.parse_share(text)
    missing = "\n".join(line for line in records[0].text().splitlines() if not line.startswith("  7 "))
    with pytest.raises(escrow.CorruptShareError, match="missing"):
        escrow.parse_share(missing)


def test_a_forged_extra_share_is_caught(records, identity):
    """A share beyond the threshold must restore the same secret as the others: a valid
    share of another secret relabelled with this split's id and custodian 5 is refused."""
    forged_split = escrow.split(f"{pyrage.x25519.Identity.generate()}", shares=5, threshold=3)
    from shamir_mnemonic.share import Share
    import dataclasses
    real5, fake5 = Share.from_mnemonic(records[4].mnemonic), Share.from_mnemonic(forged_split[4].mnemonic)
    forged = dataclasses.replace(fake5, identifier=real5.identifier, iteration_exponent=real5.iteration_exponent,
                                 extendable=real5.extendable)
    with pytest.raises(escrow.CorruptShareError):
        escrow.combine([r.text() for r in records[:3]] + [forged.mnemonic()])
    with pytest.raises(escrow.CorruptShareError, match="do not fit together"):  # SLIP-39's digest
        escrow.combine([records[0].text(), records[1].text(), forged.mnemonic()])


# --- files and CLI ---------------------------------------------------------------------

def _split_cli(identity_file: Path, out: Path, *extra: str) -> dict:
    out.mkdir(exist_ok=True)
    r = run_cli("key", "split", str(identity_file), "--shares", "5", "--threshold", "3", "--out-dir", str(out),
                "--json", *extra)
    assert r.code == 0, r.err
    return json.loads(r.out)


def test_cli_split_writes_private_sheets_and_combine_restores(tmp_path, identity_file, identity):
    res = _split_cli(identity_file, tmp_path / "sheets")
    assert res["public_key"] == str(identity.to_public()) and (res["shares"], res["threshold"]) == (5, 3)
    files = [Path(f) for f in res["files"]]
    assert len(files) == 5
    for n, f in enumerate(files, 1):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        text = f.read_text()
        assert f"custodian:   {n} of 5" in text and "threshold:   3" in text
        assert "archiver key combine" in text and str(identity) not in text
    out = tmp_path / "restored.txt"
    r = run_cli("key", "combine", str(files[4]), str(files[0]), str(files[2]), "--out", str(out), "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["custodians"] == [1, 3, 5] and doc["public_key"] == str(identity.to_public())
    assert "identity" not in doc  # written to the file only
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert escrow.parse_identity(out.read_text()).text == str(identity)


def test_cli_never_overwrites(tmp_path, identity_file, identity):
    res = _split_cli(identity_file, tmp_path / "sheets")
    files = res["files"]
    out = tmp_path / "restored.txt"
    out.write_text("precious\n")
    r = run_cli("key", "combine", *files[:3], "--out", str(out))
    _one_line_exit_2(r, "already exists")
    assert out.read_text() == "precious\n"
    # a sheet name that is already taken: the whole split is refused, nothing half-written
    sheets = tmp_path / "sheets2"
    sheets.mkdir()
    records = escrow.split(identity_file.read_text(), 5, 3)
    (sheets / records[3].file_name()).write_text("someone else's\n")
    with pytest.raises(escrow.EscrowError, match="already exists"):
        escrow.write_shares(records, sheets)
    assert sorted(p.name for p in sheets.iterdir()) == [records[3].file_name()]


def test_cli_combine_prints_identity_without_out(tmp_path, identity_file, identity):
    files = _split_cli(identity_file, tmp_path / "sheets")["files"]
    r = run_cli("key", "combine", *files[1:4])
    assert r.code == 0, r.err
    assert escrow.parse_identity(r.out).text == str(identity)
    assert "custodians 2, 3, 4" in r.err
    r = run_cli("key", "combine", *files[1:4], "--json")
    assert json.loads(r.out)["identity"] == str(identity)


def test_cli_passphrase_file(tmp_path, identity_file, identity):
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    files = _split_cli(identity_file, tmp_path / "sheets", "--passphrase-file", str(pw))["files"]
    r = run_cli("key", "combine", *files[:3], "--passphrase-file", str(pw), "--json")
    assert r.code == 0 and json.loads(r.out)["public_key"] == str(identity.to_public())
    _one_line_exit_2(run_cli("key", "combine", *files[:3]), "passphrase")


def test_cli_hostile_inputs_one_line_exit_2(tmp_path, identity_file, records):
    sheets = [tmp_path / f"s{i}.txt" for i in range(5)]
    for p, r in zip(sheets, records):
        p.write_text(r.text())
    s = [str(p) for p in sheets]
    _one_line_exit_2(run_cli("key", "combine", s[0], s[1]), "2 share(s) given, 3 needed")
    _one_line_exit_2(run_cli("key", "combine", s[0], s[1], s[1]), "custodian 2", "twice")
    corrupt = tmp_path / "corrupt.txt"
    corrupt.write_text(_with_word(records[2], 7, "zzzz"))
    _one_line_exit_2(run_cli("key", "combine", s[0], s[1], str(corrupt)), "not a SLIP-39 word")
    binary = tmp_path / "binary.bin"
    binary.write_bytes(os.urandom(256) + b"\xff\xfe")
    _one_line_exit_2(run_cli("key", "combine", s[0], s[1], str(binary)), "not a UTF-8 text file")
    huge = tmp_path / "huge.txt"
    huge.write_text("acid " * 20000)
    _one_line_exit_2(run_cli("key", "combine", s[0], s[1], str(huge)), "larger than")
    other = escrow.split(identity_file.read_text(), 5, 3)
    mixed = tmp_path / "other.txt"
    mixed.write_text(other[2].text())
    if other[0].split_id != records[0].split_id:
        _one_line_exit_2(run_cli("key", "combine", s[0], s[1], str(mixed)), "different splits")
    _one_line_exit_2(run_cli("key", "combine", s[0], s[1], str(tmp_path / "absent.txt")), "does not exist")
    bad_id = tmp_path / "bad-id.txt"
    bad_id.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    out = tmp_path / "out"
    out.mkdir()
    _one_line_exit_2(run_cli("key", "split", str(bad_id), "--shares", "3", "--threshold", "2", "--out-dir", str(out)),
                     "not a valid age X25519 identity")
    _one_line_exit_2(run_cli("key", "split", str(identity_file), "--shares", "3", "--threshold", "1",
                             "--out-dir", str(out)), "--threshold must be at least 2")
    assert list(out.iterdir()) == []
    _one_line_exit_2(run_cli("key", "combine", *s[:3], "--out", str(tmp_path / "no" / "such" / "dir.key")),
                     "cannot create it")
    r = run_cli("key", "combine", s[0], s[1], "--json")
    assert r.code == 2
    doc = json.loads(r.out)
    assert (doc["ok"], doc["kind"], doc["needed"], doc["given"]) == (False, "too-few-shares", 3, 2)


@pytest.mark.skipif(AGE is None, reason="the age binary is not installed (CI installs it)")
def test_real_age_decrypts_with_the_combined_identity(tmp_path):
    """age-keygen makes the key, `age -r` encrypts to it, the key is split and combined by
    archiver, and `age -d -i` with the combined identity decrypts."""
    keygen = shutil.which("age-keygen")
    ident = tmp_path / "age-key.txt"
    if keygen:
        subprocess.run([keygen, "-o", str(ident)], check=True, capture_output=True)
    else:
        ident.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    recipient = escrow.parse_identity(ident.read_text()).public_key
    msg, box = tmp_path / "msg", tmp_path / "msg.age"
    msg.write_bytes(os.urandom(4096))
    subprocess.run([AGE, "-r", recipient, "-o", str(box), str(msg)], check=True)
    files = _split_cli(ident, tmp_path / "sheets")["files"]
    combined = tmp_path / "combined.txt"
    assert run_cli("key", "combine", files[0], files[2], files[3], "--out", str(combined)).code == 0
    out = subprocess.run([AGE, "-d", "-i", str(combined), str(box)], check=True, capture_output=True)
    assert out.stdout == msg.read_bytes()


def test_format_doc_script_combines_sheets_without_archiver(tmp_path, records, identity):
    """docs/FORMAT.md's combine_shares.py (shamir-mnemonic only, no archiver import)
    turns any 3 sheets into the identity."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md").read_text()
    script = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "Usage: combine_shares.py" in b)
    assert "archiver" not in "".join(line for line in script.splitlines() if "import" in line)
    (tmp_path / "combine_shares.py").write_text(script)
    sheets = []
    for r in (records[4], records[1], records[3]):
        sheets.append(tmp_path / r.file_name())
        sheets[-1].write_text(r.text())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "combine_shares.py", *map(str, sheets)], cwd=tmp_path, env=env,
                         check=True, capture_output=True, text=True)
    assert out.stdout.strip() == str(identity)


def test_python_api(tmp_path, identity_file, identity):
    import archiver
    (tmp_path / "sheets").mkdir()
    split = archiver.key_split(identity_file, shares=4, threshold=2, out_dir=tmp_path / "sheets")
    assert split.public_key == str(identity.to_public()) and len(split.files) == 4
    res = archiver.key_combine(split.files[2:], out=tmp_path / "restored.key")
    assert res.key.custodians == [3, 4] and res.out == tmp_path / "restored.key"
    assert escrow.parse_identity(res.out.read_text()).text == str(identity)


def test_mutated_sheets_are_refused_or_restore_the_key(records, identity):
    """Hostile edits (bytes replaced, deleted or duplicated; words swapped) never escape as
    anything but an EscrowError, and whatever combines is still the recorded key."""
    import random
    rng = random.Random(13)
    base = records[2].text()
    for _ in range(300):
        text = list(base)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(text))
            op = rng.randrange(3)
            if op == 0:
                text[i] = rng.choice("0123456789 \n\t:#abcxyz\u00b2\u0663\x00\ufeff")
            elif op == 1:
                del text[i]
            else:
                text.insert(i, text[i])
        try:
            key = escrow.combine([records[0].text(), records[1].text(), "".join(text)])
        except escrow.EscrowError:
            continue
        assert key.identity.text == str(identity)
