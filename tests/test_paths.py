"""manifests/paths.py: every manifest path is checked before a restore writes anything."""
from __future__ import annotations

import os
import unicodedata

import pytest

from manifests.errors import UnsafePathError
from manifests.paths import MAX_NAME_BYTES, MAX_PATH_BYTES, check_path, check_paths, fold, unsafe_char


def refused(path, why: str) -> None:
    with pytest.raises(UnsafePathError, match=why) as ei:
        check_path(path)
    msg = str(ei.value)
    assert msg.startswith("unsafe path in manifest: ") and "\n" not in msg


@pytest.mark.parametrize("path,why", [
    ("/etc/passwd", "absolute"),
    ("/", "absolute"),
    ("//server/share", "absolute"),
    ("..", "'..' component"),
    ("../x", "'..' component"),
    ("a/../../x", "'..' component"),
    ("a/..", "'..' component"),
    (".", "'.' component"),
    ("./a", "'.' component"),
    ("a/./b", "'.' component"),
    ("", "empty"),
    ("a//b", "empty component"),
    ("a/", "empty component"),
    ("dir/sub/", "empty component"),
    ("C:foo", "drive letter"),
    ("c:/x", "drive letter"),
    ("Z:", "drive letter"),
    ("a:b", "drive letter"),
    ("\\\\server\\share", "backslash"),
    ("a\\b", "backslash"),
    ("..\\x", "backslash"),
    ("a\x00b", "control"),
])
def test_refuses_unsafe(path, why):
    refused(path, why)


@pytest.mark.parametrize("code", list(range(0x00, 0x20)) + [0x7F])
def test_refuses_every_control_char(code):
    refused(f"dir/a{chr(code)}b", "control character")
    refused(chr(code), "control character")


def test_refuses_non_string():
    refused(None, "empty")


def test_length_limits():
    name = "n" * MAX_NAME_BYTES
    assert check_path(name) == [name]
    refused("n" * (MAX_NAME_BYTES + 1), "component too long")
    refused("d/" + "é" * 128, "component too long")  # 256 bytes in UTF-8, 128 characters
    long_ok = "/".join(["d" * 200] * 20)  # 4019 bytes
    assert len(long_ok.encode()) <= MAX_PATH_BYTES
    assert len(check_path(long_ok)) == 20
    refused("/".join(["d" * 200] * 21), "too long")


@pytest.mark.parametrize("path,parts", [
    ("model.safetensors", ["model.safetensors"]),
    ("ckpt/shard-00001-of-00002.bin", ["ckpt", "shard-00001-of-00002.bin"]),
    ("ckpt/.gitattributes", ["ckpt", ".gitattributes"]),
    (".hidden", [".hidden"]),
    ("...", ["..."]),
    ("..a", ["..a"]),
    ("with space/ and spaces ", ["with space", " and spaces "]),
    ("模型/权重.bin", ["模型", "权重.bin"]),
    ("café/naïve ☃ 🤖", ["café", "naïve ☃ 🤖"]),
    ("ab:c", ["ab:c"]),  # a colon after more than one letter is not a drive letter
    ("1:x", ["1:x"]),
])
def test_accepts_normal_names(path, parts):
    assert check_path(path) == parts


def test_check_paths_accepts_a_normal_tree():
    check_paths([("ckpt", "dir"), ("ckpt/a.bin", "file"), ("ckpt/sub", "dir"), ("ckpt/sub/b", "file"),
                 ("ckpt/.gitattributes", "file"), ("other.txt", "file")])
    check_paths([])


def _collides(items, match="collides"):
    with pytest.raises(UnsafePathError, match=match) as ei:
        check_paths(items)
    assert "\n" not in str(ei.value)


def test_check_paths_refuses_duplicates():
    _collides([("a", "file"), ("a", "file")])
    _collides([("a", "dir"), ("a", "file")])


def test_check_paths_refuses_case_collisions():
    _collides([("A.txt", "file"), ("a.txt", "file")])
    _collides([("Dir", "dir"), ("dir", "dir")])
    _collides([("STRASSE", "file"), ("straße", "file")])  # full case folding


def test_check_paths_refuses_normalisation_collisions():
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    assert unicodedata.normalize("NFC", nfd) == nfc and nfc != nfd
    _collides([(nfc, "file"), (nfd, "file")])
    _collides([("d/" + nfd + "/x", "file"), ("d/" + nfc + "/y", "file"), ("d/" + nfd, "dir"),
               ("d/" + nfc, "dir")])
    _collides([("\u212a.bin", "file"), ("K.bin", "file")])  # KELVIN SIGN vs K
    _collides([("\u212a.bin", "file"), ("k.bin", "file")])
    _collides([("\ufb01le", "file"), ("file", "file")])  # 'fi' ligature (compatibility)
    assert fold(nfc) == fold(nfd) == fold("CAFE\u0301")


def test_check_paths_refuses_file_used_as_directory():
    _collides([("a", "file"), ("a/b", "file")], match="inside file")
    _collides([("a/b/c", "file"), ("a", "dir"), ("a/b", "file")], match="inside file")  # any order
    _collides([("x/A", "file"), ("x/a/deep/y", "file")], match="inside file")  # across case


def test_check_paths_checks_each_path():
    with pytest.raises(UnsafePathError, match="'..' component"):
        check_paths([("ok", "file"), ("../evil", "file")])


def test_check_paths_directory_prefix_is_fine():
    check_paths([("a", "dir"), ("a/b", "dir"), ("a/b/c", "file"), ("ab", "file"), ("a.b", "file")])


@pytest.mark.parametrize("p", ["x/c:d", "a/C:/b", "dir/z:stream"])
def test_drive_letter_in_any_component_refused(p):
    with pytest.raises(UnsafePathError, match="drive letter"):
        check_path(p)


# -- unsafe characters: what a path may not contain, by class ------------------------------------

C1 = list(range(0x80, 0xA0))
SURROGATES = [0xD800, 0xDB7F, 0xDBFF, 0xDC00, 0xDC80, 0xDCFF, 0xDFFF]  # DC80-DCFF: surrogateescape of bad bytes
BIDI = [0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069, 0x200E, 0x200F, 0x061C]
UNSAFE = [(c, "control character") for c in [*range(0x20), 0x7F, *C1]] + \
         [(c, "lone surrogate") for c in SURROGATES] + [(c, "bidirectional control") for c in BIDI]


@pytest.mark.parametrize("code,why", UNSAFE, ids=[f"U+{c:04X}" for c, _ in UNSAFE])
def test_refuses_every_unsafe_character_class(code, why):
    ch = chr(code)
    for path in (ch, f"dir/a{ch}b", f"{ch}dir/file", f"a/b/c{ch}"):
        refused(path, f"{why} U\\+{code:04X}")
        assert unsafe_char(path) is not None
    with pytest.raises(UnsafePathError, match=why):
        check_paths([("ok", "dir"), (f"ok/x{ch}", "file")])


@pytest.mark.parametrize("code", [0x20, 0x7E, 0xA0, 0xA1, 0xFF, 0x061B, 0x061D, 0x200B, 0x200C, 0x200D, 0x2029,
                                  0x202F, 0x2065, 0x206A, 0xD7FF, 0xE000, 0xFEFF, 0x1F916])
def test_neighbours_of_the_unsafe_classes_are_allowed(code):
    """The classes are exact: the code points just outside each range are ordinary text
    (NBSP, ZWJ in emoji sequences, Arabic punctuation, private use)."""
    name = f"a{chr(code)}b"
    assert unsafe_char(name) is None
    assert check_path(f"dir/{name}") == ["dir", name]


def test_component_limit_counts_utf8_bytes():
    assert check_path("d/" + "\U0001F916" * 63) == ["d", "\U0001F916" * 63]  # 252 bytes
    refused("d/" + "\U0001F916" * 64, "component too long")  # 256 bytes, 64 characters
    assert check_path("模" * 85) == ["模" * 85]  # 255 bytes
    refused("模" * 86, "component too long")


# -- the archive side refuses the same names, with a clear message --------------------------------

ARCHIVE_SIDE = [("esc\x1b[2J", "U+001B"), ("del\x7f", "U+007F"), ("csi\x9b2J", "U+009B"), ("nel\x85", "U+0085"),
                ("rlo\u202egpj.exe", "U+202E"), ("lri\u2066x", "U+2066"), ("rlm\u200f", "U+200F"),
                ("alm\u061c", "U+061C")]


@pytest.mark.parametrize("name,code", ARCHIVE_SIDE, ids=[c for _, c in ARCHIVE_SIDE])
def test_archive_refuses_unsafe_file_names(tmp_path, monkeypatch, name, code):
    from tests.helpers import run_cli
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARCHIVER_STORE", str(tmp_path / "store"))
    d = tmp_path / "ckpt"
    (d / "sub").mkdir(parents=True)
    (d / "ok.bin").write_bytes(b"fine")
    (d / "sub" / name).write_bytes(b"x")
    r = run_cli("archive", str(d), "--name", "m")
    assert r.code == 2 and r.out == ""
    assert r.err.startswith("archiver: error: cannot archive path 'ckpt/sub/") and r.err.count("\n") == 1, r.err
    assert code in r.err and unsafe_char(r.err.rstrip("\n")) is None  # named, and shown escaped
    assert run_cli("list", "--json").json() == []  # nothing recorded


def test_archive_refuses_a_file_name_that_is_not_utf8(tmp_path, monkeypatch):
    from tests.helpers import run_cli
    monkeypatch.setenv("ARCHIVER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARCHIVER_STORE", str(tmp_path / "store"))
    d = tmp_path / "ckpt"
    d.mkdir()
    try:
        os.close(os.open(os.path.join(os.fsencode(d), b"bad\xff\xfe"), os.O_CREAT | os.O_WRONLY))
    except OSError:
        pytest.skip("filesystem refuses non-UTF-8 names")
    r = run_cli("archive", str(d), "--name", "m")
    assert r.code == 2 and "not valid UTF-8" in r.err and r.err.count("\n") == 1, r.err  # refused input
    assert run_cli("list", "--json").json() == []


def _check_paths_by_path(items: list[tuple[str, str]]) -> None:
    """check_paths as it was written before its plain-ASCII path: every path through
    check_path and fold, every prefix of every path folded and looked up."""
    seen: dict[str, str] = {}
    files: set[str] = set()
    all_paths: list[list[str]] = []
    for path, typ in items:
        parts = check_path(path)
        key = fold(path)
        if key in seen:
            raise UnsafePathError(path, f"collides with {seen[key]!r}")
        seen[key] = path
        if typ != "dir":
            files.add(key)
        all_paths.append(parts)
    for parts in all_paths:
        for i in range(1, len(parts)):
            prefix = fold("/".join(parts[:i]))
            if prefix in files:
                raise UnsafePathError("/".join(parts), f"is inside file {seen[prefix]!r}")


def _verdict(check, items: list[tuple[str, str]]) -> str | None:
    try:
        check(items)
        return None
    except UnsafePathError as e:
        return str(e)


def test_check_paths_plain_ascii_shortcut_answers_as_every_path_checked_alone():
    """The plain-ASCII shortcut and the once-per-directory 'inside a file' question give the
    same verdict, word for word, as checking and folding each path and each prefix."""
    import random
    rng = random.Random(6)
    alphabet = ["a", "B", "b", ".", "..", "/", ":", "\\", " ", "-", "\x7f", "\x1f", "\u00e9", "e\u0301", "K", "\u212a",
                "x" * 250, "C:"]
    for _ in range(3000):
        items = []
        for _ in range(rng.randint(1, 6)):
            path = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
            items.append((path, rng.choice(["file", "dir", "symlink"])))
        assert _verdict(check_paths, items) == _verdict(_check_paths_by_path, items), items
    tree = [("d", "dir"), ("d/f", "file"), ("d/f/g", "file"), ("d/F/h/i", "file"), ("e", "dir"), ("e/x", "file")]
    for n in range(1, len(tree) + 1):
        assert _verdict(check_paths, tree[:n]) == _verdict(_check_paths_by_path, tree[:n])
    assert _verdict(check_paths, tree) == "unsafe path in manifest: 'd/f/g' (is inside file 'd/f')"


def _outcome(items: list) -> tuple[str, str] | None:
    try:
        check_paths(items)
    except UnsafePathError as e:
        return e.path, e.reason
    return None


_TREE = [("m", "dir"), ("m/a b", "dir"), ("m/a b/x.bin", "file"), ("m/c", "dir"), ("m/c/d", "dir"),
         ("m/c/d/e.json", "file"), ("m/f", "file"), ("m/g", "symlink")]


@pytest.mark.parametrize("change", [
    [],  # a plain tree: accepted by the whole-list check
    [("m/F", "file")],  # folds like m/f
    [("m/f", "file")],  # listed twice
    [("m/f/x", "file")],  # inside a file
    [("m/g/x/y", "file")],  # inside a symlink, two levels down
    [("m/c/d/e.json/z", "dir")],
    [("m//x", "file")], [("/m/x", "file")], [("m/x/", "file")], [("", "file")],
    [("m/./x", "file")], [("m/../x", "file")], [("m/..", "file")], [(".", "dir")],
    [("m/" + "n" * (MAX_NAME_BYTES + 1), "file")], [("m/" + "n" * MAX_NAME_BYTES, "file")],
    [("m/" + "/".join(["d" * 200] * 21), "file")],  # over MAX_PATH_BYTES in all
    [("m/a\nb", "file")], [("m/a\\b", "file")], [("m/c:x", "file")], [("m/\x7f", "file")],
    [("m/é", "file")], [("m/E\u0301", "file"), ("m/\u00c9", "file")],  # not plain: the loop decides
    [(None, "file")], [(b"m/x", "file")],
])
def test_check_paths_of_a_whole_list_is_the_loops_answer(change, monkeypatch):
    """A list of plain paths is first asked as a whole (`_plain_all`): what check_paths says
    (accepted, or the first offence with its path and reason) is what the per-path loop
    alone says, for every kind of offence."""
    from manifests import paths
    items = _TREE + change
    whole = _outcome(items)
    with monkeypatch.context() as m:
        m.setattr(paths, "_plain_all", lambda items: False)
        assert _outcome(items) == whole
    assert paths._plain_all(list(_TREE)) is True  # the plain tree takes the whole-list path
    if whole is not None:
        assert paths._plain_all(items) is False


def test_check_paths_whole_list_accepts_only_what_every_path_checked_alone_accepts():
    """Generated lists, most of them plain trees one step from an offence (a name folding
    like another, a path listed twice, a path below a file or symlink, a hostile name or
    form somewhere): the whole-list answer (`_plain_all`) is True only where checking and
    folding each path and each prefix accepts, and check_paths' verdict is that one's."""
    import random
    from manifests import paths
    rng = random.Random(15)
    hostile = ["", ".", "..", "a:", "C:", "c:x", "a\\b", "a\x00", "\x7f", "\n", "\t", "\x1b[2J", "\u00e9", "e\u0301",
               "\u212a", "\ufb01", "\u202e", "\u00a0", "\udcff", "x" * (MAX_NAME_BYTES + 1), "/", "//"]
    fast = accepted = 0
    for _ in range(4000):
        items: list[tuple[str, str]] = []
        for _ in range(rng.randint(1, 10)):
            if items and rng.random() < 0.4:
                base = rng.choice(items)[0]
                path = base if rng.random() < 0.1 else f"{base}/{rng.choice('abAB')}"
            else:
                path = "/".join(rng.choice(["a", "b", "A", "c d", "x.y", "~"]) for _ in range(rng.randint(1, 3)))
            if rng.random() < 0.04:
                path = rng.choice([f"/{path}", f"{path}/", path.replace("/", "//"), path.upper(),
                                   f"{path}/{rng.choice(hostile)}", f"{rng.choice(hostile)}/{path}",
                                   "/".join(["n" * 250] * 17), "n" * MAX_PATH_BYTES, "n" * (MAX_PATH_BYTES + 1)])
            items.append((path, rng.choice(["dir", "dir", "file", "symlink"])))
        reference = _verdict(_check_paths_by_path, items)
        if paths._plain_all(list(items)):
            fast += 1
            assert reference is None, items
        accepted += reference is None
        assert _verdict(check_paths, items) == reference, items
    assert fast > 500 and accepted - fast < accepted // 2  # the whole-list answer was asked, and mostly given
