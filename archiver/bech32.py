"""Bech32 (BIP 173), the text encoding of age keys: `AGE-SECRET-KEY-1...` is the
upper-cased bech32 of a 32-byte X25519 secret. Key escrow splits those raw bytes, so
it needs both directions; pyrage parses keys but does not hand out their bytes.

Like age, no 90-character limit is applied (age recipients of other types exceed it)."""
from __future__ import annotations

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


class Bech32Error(ValueError):
    """Text that is not valid bech32 (bad character, mixed case, checksum, padding)."""


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i, g in enumerate(_GENERATOR):
            chk ^= g if (top >> i) & 1 else 0
    return chk


def _expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = bits = 0
    out = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or (acc << (to_bits - bits)) & maxv:
        raise Bech32Error("non-zero padding")
    return out


def encode(hrp: str, data: bytes) -> str:
    """Lower-case bech32 of `data` under the human-readable part `hrp`."""
    hrp = hrp.lower()
    values = _convert(data, 8, 5, pad=True)
    check = _polymod(_expand(hrp) + values + [0] * 6) ^ 1
    return hrp + "1" + "".join(CHARSET[v] for v in values + [(check >> 5 * (5 - i)) & 31 for i in range(6)])


def decode(text: str) -> tuple[str, bytes]:
    """(human-readable part in lower case, data bytes); raises Bech32Error."""
    if text.lower() != text and text.upper() != text:
        raise Bech32Error("mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise Bech32Error("no separator or too short")
    hrp, rest = text[:pos], text[pos + 1:]
    if any(not 33 <= ord(c) <= 126 for c in hrp):
        raise Bech32Error("bad character in the prefix")
    try:
        values = [CHARSET.index(c) for c in rest]
    except ValueError:
        raise Bech32Error("character outside the bech32 alphabet") from None
    if _polymod(_expand(hrp) + values) != 1:
        raise Bech32Error("checksum mismatch")
    return hrp, bytes(_convert(values[:-6], 5, 8, pad=False))
