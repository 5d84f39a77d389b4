"""manifests/paths.py: every manifest path is checked before a restore writes anything."""
from __future__ import annotations

import unicodedata

import pytest

from manifests.errors import UnsafePathError
from manifests.paths import MAX_NAME_BYTES, MAX_PATH_BYTES, check_path, check_paths, fold


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
