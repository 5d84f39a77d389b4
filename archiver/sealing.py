"""Sealed stores (format version 2): the bytes transformation the Repository applies at
its boundary, so the pipeline, checker and restorer never see ciphertext.

Why each piece exists (docs/FORMAT.md, "Sealed stores"):

* chunk and manifest objects are age files (X25519 recipient, ChaCha20-Poly1305 STREAM)
  behind a one-line prefix naming the run key that opens them, so the `age` CLI plus
  `tail -c` decrypts any object;
* each run seals to its own ephemeral X25519 identity, which is wrapped to the custodians
  (a key object) and then forgotten: the host that archived run A cannot open run B;
* chunk addresses are keyed BLAKE3 of the chunk's plaintext hash under the store's
  address key: equal chunks dedup across runs, but the address reveals no plaintext hash.

Encryption is written here (not pyrage.encrypt) to emit exactly one X25519 stanza and no
grease stanza, so a sealed object's size is a function of its plaintext size and a LIST
size can be checked exactly; decryption goes through pyrage (rage), an independent,
strict reader of the same format."""
from __future__ import annotations

import base64
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import blake3

if TYPE_CHECKING:
    import pyrage
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

# pyrage and cryptography are imported by the functions that use them: every command imports
# this module (through the repository), and a store that is not sealed should not pay for
# them at start-up (the serial head of an archive; bench/RESULTS.md, branch wall).

from archiver.errors import CorruptChunkError, IdentityError, InvalidOptionError

SEALED_VERSION = 2
PREFIX_TAG = b"archiver-sealed/1 "
PREFIX_LEN = len(PREFIX_TAG) + 32 + 1  # tag, 32-hex run key id, newline
AGE_HEADER_LEN = 168  # intro line, one X25519 stanza (two lines), MAC line
STREAM_CHUNK = 64 * 1024
TAG = 16
MAX_KEY_OBJECT_BYTES = 64 * 1024
_KID = re.compile(rb"^[0-9a-f]{32}$")
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def sealed_size(n: int) -> int:
    """Stored size of a sealed object whose plaintext is `n` bytes."""
    chunks = max(1, -(-n // STREAM_CHUNK))
    return PREFIX_LEN + AGE_HEADER_LEN + 16 + n + TAG * chunks


def unsealed_size(s: int) -> int | None:
    """The plaintext size a sealed object of `s` bytes holds, or None if no size gives `s`."""
    body = s - PREFIX_LEN - AGE_HEADER_LEN - 16
    if body < TAG:
        return None
    chunks = -(-body // (STREAM_CHUNK + TAG))
    n = body - TAG * chunks
    return n if n >= 0 and sealed_size(n) == s else None


def address(address_key: bytes, h: str) -> str:
    """The store key name of chunk `h`: keyed BLAKE3 of its plaintext hash. Equal chunks get
    equal addresses (dedup); without the address key an address says nothing about `h`."""
    return blake3.blake3(bytes.fromhex(h), key=address_key).hexdigest()


def address_check(address_key: bytes) -> str:
    """A public value that proves a host's address key is this store's (reveals nothing)."""
    return blake3.blake3(b"archiver-address-check-v1", key=address_key).hexdigest()


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    return HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)


def _recipient_bytes(recipient: str) -> bytes:
    """The 32-byte X25519 public key of an `age1...` recipient (bech32, checked by pyrage)."""
    import pyrage
    try:
        pyrage.x25519.Recipient.from_str(recipient)
    except Exception:
        raise InvalidOptionError("encrypt_to", f"is not an age X25519 recipient (age1...): {recipient[:80]!r}") \
            from None
    return _bech32_payload(recipient)


def _bech32_payload(text: str) -> bytes:
    """The 32-byte key inside an age bech32 string (already validated by pyrage)."""
    data = [_BECH32.index(c) for c in text.lower().rsplit("1", 1)[1][:-6]]
    acc, bits, out = 0, 0, bytearray()
    for v in data:
        acc, bits = (acc << 5) | v, bits + 5
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    return bytes(out[:32])


def _stream_nonce(i: int, last: bool) -> bytes:
    return i.to_bytes(11, "big") + (b"\1" if last else b"\0")


def age_encrypt(plain: bytes | memoryview, recipient: bytes, prefix: bytes = b"") -> bytes:
    """`prefix` + an age v1 file of `plain` for one X25519 recipient (32 raw bytes), no
    grease. Written into one preallocated buffer (encrypt_into): no per-chunk copies or join."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    file_key = secrets.token_bytes(16)
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient))
    wrap = _hkdf(shared, eph_pub + recipient, b"age-encryption.org/v1/X25519")
    body = ChaCha20Poly1305(wrap).encrypt(b"\0" * 12, file_key, None)
    header = b"age-encryption.org/v1\n-> X25519 " + _b64(eph_pub) + b"\n" + _b64(body) + b"\n---"
    mac = hmac.new(_hkdf(file_key, b"", b"header"), header, "sha256").digest()
    nonce = secrets.token_bytes(16)
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    view = memoryview(plain)
    n = len(view)
    count = max(1, -(-n // STREAM_CHUNK))
    head = prefix + header + b" " + _b64(mac) + b"\n" + nonce
    out = bytearray(len(head) + n + TAG * count)
    out[:len(head)] = head
    dst = memoryview(out)
    pos = len(head)
    into = getattr(aead, "encrypt_into", None)
    for i in range(count):
        piece = view[i * STREAM_CHUNK:(i + 1) * STREAM_CHUNK]
        end = pos + len(piece) + TAG
        if into is not None:
            into(_stream_nonce(i, i == count - 1), piece, None, dst[pos:end])
        else:  # cryptography < 45
            dst[pos:end] = aead.encrypt(_stream_nonce(i, i == count - 1), bytes(piece), None)
        pos = end
    return out  # type: ignore[return-value]  # a bytearray: bytes-like for every store


class AgeFormatError(ValueError):
    """A sealed object's age body is not the shape archiver writes, or does not authenticate."""


def _unb64(text: bytes) -> bytes:
    if not re.fullmatch(rb"[A-Za-z0-9+/]{43}", text):
        raise AgeFormatError("malformed age header")
    return base64.b64decode(text + b"=")


def age_decrypt(body: bytes | memoryview, identity: X25519PrivateKey) -> bytes:
    """Decrypt an age file of exactly the shape `age_encrypt` writes (one X25519 stanza,
    168-byte header): the stanza must unwrap, the header MAC and every STREAM chunk's tag
    must verify, and the last chunk must be marked last; anything else raises AgeFormatError."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    view = memoryview(body)
    head = bytes(view[:AGE_HEADER_LEN])
    m = re.fullmatch(rb"age-encryption\.org/v1\n-> X25519 ([A-Za-z0-9+/]{43})\n([A-Za-z0-9+/]{43})\n--- "
                     rb"([A-Za-z0-9+/]{43})\n", head)
    if m is None or len(view) < AGE_HEADER_LEN + 16 + TAG:
        raise AgeFormatError("not an archiver age header (truncated, forged or another shape)")
    eph_pub, wrapped, mac = (_unb64(g) for g in m.groups())
    me = identity.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        shared = identity.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        file_key = ChaCha20Poly1305(_hkdf(shared, eph_pub + me, b"age-encryption.org/v1/X25519")).decrypt(
            b"\0" * 12, wrapped, None)
    except (InvalidTag, ValueError):
        raise AgeFormatError("the run key does not open its stanza (forged header)") from None
    want = hmac.new(_hkdf(file_key, b"", b"header"), head[:head.rindex(b"---") + 3], "sha256").digest()
    if not hmac.compare_digest(want, mac):
        raise AgeFormatError("header MAC does not verify (forged header)")
    nonce = bytes(view[AGE_HEADER_LEN:AGE_HEADER_LEN + 16])
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    payload = view[AGE_HEADER_LEN + 16:]
    count = max(1, -(-len(payload) // (STREAM_CHUNK + TAG)))
    out = bytearray(len(payload) - TAG * count)
    dst = memoryview(out)
    into = getattr(aead, "decrypt_into", None)
    pos = 0
    try:
        for i in range(count):
            piece = payload[i * (STREAM_CHUNK + TAG):(i + 1) * (STREAM_CHUNK + TAG)]
            if len(piece) < TAG or (i and len(piece) == TAG):
                raise AgeFormatError("truncated STREAM chunk")
            end = pos + len(piece) - TAG
            if into is not None:
                into(_stream_nonce(i, i == count - 1), piece, None, dst[pos:end])
            else:
                dst[pos:end] = aead.decrypt(_stream_nonce(i, i == count - 1), bytes(piece), None)
            pos = end
    except InvalidTag:
        raise AgeFormatError(f"STREAM chunk {i} does not authenticate (a flipped bit or truncation)") from None
    return out  # type: ignore[return-value]


def private_key(identity: object) -> X25519PrivateKey:
    """The X25519 private key of a pyrage identity (AGE-SECRET-KEY-1...)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    return X25519PrivateKey.from_private_bytes(_bech32_payload(str(identity)))


def load_identities(paths: list[str]) -> list[pyrage.x25519.Identity]:
    """Every AGE-SECRET-KEY line of the identity files (age-keygen's format)."""
    import pyrage
    out = []
    for p in paths:
        try:
            text = open(p, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidOptionError("identity", f"cannot be read: {p}: {getattr(e, 'strerror', None) or e}") \
                from None
        keys = [line.strip() for line in text.splitlines() if line.strip().startswith("AGE-SECRET-KEY-")]
        try:
            found = [pyrage.x25519.Identity.from_str(k) for k in keys]
        except Exception:
            raise InvalidOptionError("identity", f"{p} holds a malformed AGE-SECRET-KEY line") from None
        if not found:
            raise InvalidOptionError("identity", f"{p} holds no age identity (AGE-SECRET-KEY-1...)")
        out += found
    return out


def marker(store_id: str, check: str) -> bytes:
    """The store.json of a sealed store."""
    return (json.dumps({"format": "archiver-store", "sealed": {"address_check": check, "store": store_id},
                        "version": SEALED_VERSION}, sort_keys=True) + "\n").encode()


def _set_body(generation: int, recipients: list[str]) -> dict:
    return {"format": "archiver-recipients", "generation": generation, "recipients": sorted(set(recipients))}


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def recipient_set(generation: int, recipients: list[str], address_key: bytes) -> bytes:
    """The object naming who generation `generation` of the key objects is wrapped to,
    authenticated with the address key (`mac`: keyed BLAKE3 of the canonical JSON without
    it), so someone who can only write the bucket cannot add a recipient of their own."""
    body = _set_body(generation, recipients)
    mac = blake3.blake3(b"archiver-recipients-v1:" + _canonical(body), key=address_key).hexdigest()
    return _canonical({**body, "mac": mac}) + b"\n"


def parse_recipient_set(data: bytes, generation: int, address_key: bytes | None) -> list[str]:
    """The recipients of a set object, refused (IdentityError) if malformed, of another
    generation than its name, or (when the address key is at hand) not authenticated by it."""
    try:
        doc = json.loads(data)
        rec = doc["recipients"]
        assert doc["format"] == "archiver-recipients" and isinstance(rec, list) and rec
        assert doc["generation"] == generation
        for r in rec:
            _recipient_bytes(r)
    except (ValueError, KeyError, TypeError, AssertionError, InvalidOptionError):
        raise IdentityError(f"the store's recipient set {generation} is malformed") from None
    if address_key is not None and not hmac.compare_digest(
            recipient_set(generation, rec, address_key), data):
        raise IdentityError(f"the store's recipient set {generation} is not authenticated by the address key "
                            f"(a forged or altered keys/sets object): refusing to wrap keys to it")
    return list(rec)


def wrap(secret: bytes, recipients: list[str]) -> bytes:
    """A key object: `secret` age-encrypted to every custodian (pyrage: any reader of age opens it)."""
    import pyrage
    return pyrage.encrypt(secret, [pyrage.x25519.Recipient.from_str(r) for r in recipients])


@dataclass
class Sealer:
    """What a Repository needs to seal and open objects of one sealed store. Pure: the
    Repository fetches key objects and hands their bytes in."""

    store_id: str
    check: str
    identities: list = field(default_factory=list)  # the custodians' age identities given to this process
    address_key: bytes | None = None
    run_kid: str | None = None
    _run_identity: object = None
    _run_recipient: bytes | None = None
    run_keys: dict = field(default_factory=dict)  # kid -> pyrage Identity opened this process

    def set_address_key(self, key: bytes) -> None:
        if len(key) != 32 or address_check(key) != self.check:
            raise IdentityError(f"the address key given is not the one of sealed store {self.store_id}")
        self.address_key = key

    def need_address_key(self) -> bytes:
        if self.address_key is None:
            raise IdentityError(f"sealed store {self.store_id} needs its address key to archive or list chunks: "
                                f"copy the key file written by `store init`, or give an identity")
        return self.address_key

    def start_run(self) -> tuple[str, bytes]:
        """A fresh run key: (kid, its identity string to wrap). Only its public half is kept
        for sealing; the identity stays in memory to read back what this run wrote."""
        import pyrage
        ident = pyrage.x25519.Identity.generate()
        self.run_kid = secrets.token_hex(16)
        self._run_identity = ident
        self._run_recipient = _recipient_bytes(str(ident.to_public()))
        self.run_keys[self.run_kid] = ident
        return self.run_kid, (str(ident) + "\n").encode()

    def seal(self, plain: bytes | memoryview) -> bytes:
        assert self.run_kid is not None and self._run_recipient is not None
        return age_encrypt(plain, self._run_recipient, PREFIX_TAG + self.run_kid.encode() + b"\n")

    def open_key(self, kid: str, data: bytes) -> None:
        """Unwrap a run key object with the custodians' identities."""
        import pyrage
        try:
            text = pyrage.decrypt(data, self.identities).decode().strip()
            self.run_keys[kid] = pyrage.x25519.Identity.from_str(text)
        except Exception as e:
            raise IdentityError(f"no identity given opens run key {kid} ({e})") from None

    def open_address_key(self, data: bytes) -> None:
        import pyrage
        try:
            key = bytes.fromhex(pyrage.decrypt(data, self.identities).decode().strip())
        except Exception as e:
            raise IdentityError(f"no identity given opens the keys of sealed store {self.store_id} ({e})") from None
        self.set_address_key(key)


def object_kid(obj: bytes, what: str) -> str:
    """The run key id a sealed object names (CorruptChunkError-style damage if the prefix is bad)."""
    if obj[:len(PREFIX_TAG)] != PREFIX_TAG or obj[PREFIX_LEN - 1:PREFIX_LEN] != b"\n" \
            or not _KID.match(obj[len(PREFIX_TAG):PREFIX_LEN - 1]):
        raise CorruptChunkError(what, "not a sealed object (bad archiver-sealed/1 prefix)")
    return obj[len(PREFIX_TAG):PREFIX_LEN - 1].decode()


def unseal(obj: bytes, identity: object, what: str) -> bytes:
    """Decrypt a sealed object's age body; a forged header, truncation or a flipped bit is damage."""
    try:
        return age_decrypt(memoryview(obj)[PREFIX_LEN:], private_key(identity))
    except AgeFormatError as e:
        raise CorruptChunkError(what, f"sealed object does not decrypt ({e})") from None


def new_store_secret() -> tuple[str, bytes]:
    """(store id, address key) for `store init`."""
    return secrets.token_hex(16), os.urandom(32)
