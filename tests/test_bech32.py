"""archiver/bech32.py: round trips against the keys pyrage (age) writes, and refusals."""
from __future__ import annotations

import pyrage
import pytest

from archiver import bech32


def test_round_trips_age_keys():
    for _ in range(20):
        ident = pyrage.x25519.Identity.generate()
        hrp, secret = bech32.decode(str(ident))
        assert (hrp, len(secret)) == ("age-secret-key-", 32)
        assert bech32.encode(hrp, secret).upper() == str(ident)
        pub = str(ident.to_public())
        assert bech32.encode(*bech32.decode(pub)) == pub


def test_bip173_vectors():
    """Valid strings from BIP 173 decode, and re-encode to themselves (lower case)."""
    for s in ["A12UEL5L", "a12uel5l", "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
              "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w"]:
        hrp, data = bech32.decode(s)
        assert bech32.encode(hrp, data) == s.lower()


@pytest.mark.parametrize("bad", ["A1G7SGD8", "a12UEL5L", "1nwldj5", "pzry9x0s0muk", "x1b4n0q5v", "li1dgmt3",
                                 "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxx"])
def test_invalid_refused(bad):
    with pytest.raises(bech32.Bech32Error):
        bech32.decode(bad)
