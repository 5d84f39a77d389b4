"""archiver.layout's file map keys: the suffix names the map's form (`.bin` binary, `.json`
JSON as earlier archivers wrote them), a reader's order is binary then JSON, and a key is
parsed back to its hash only if it is exactly one of those two keys."""
from __future__ import annotations

from archiver import layout

H = "ab" + "0" * 62


def test_a_file_maps_key_names_its_form() -> None:
    assert layout.filemap(H) == f"filemaps/ab/{H}.bin"
    assert layout.filemap(H, binary=False) == f"filemaps/ab/{H}.json"
    assert layout.filemap_keys(H) == (layout.filemap(H), layout.filemap(H, binary=False))  # binary first
    assert all(k.startswith(layout.FILEMAPS) for k in layout.filemap_keys(H))


def test_file_map_keys_parse_back_and_strays_do_not() -> None:
    assert layout.filemap_hash(layout.filemap(H)) == (H, True)
    assert layout.filemap_hash(layout.filemap(H, binary=False)) == (H, False)
    for stray in (f"filemaps/ab/{H}", f"filemaps/ab/{H}.txt", f"filemaps/cd/{H}.bin", f"filemaps/ab/{H}.bin.json",
                  f"filemaps/ab/{H.upper()}.bin", f"filemaps/ab/{H[:-1]}.json", f"filemaps/{H}.bin",
                  f"chunks/ab/{H}", f"trees/ab/{H}.json", f"x/filemaps/ab/{H}.bin", "filemaps/ab/.bin"):
        assert layout.filemap_hash(stray) is None, stray
