"""Ed25519 signatures over manifest ids: tamper evidence that survives a compromised catalog.

A manifest id is the BLAKE3 of the manifest's canonical bytes, so signing the id signs
the whole manifest (and through its chunk hashes, every byte of the archive). The signed
message is domain-separated: b"archiver-manifest-v1:" + id (ASCII hex). The store keeps
one signature object per signer (key named by archiver.layout), never overwritten. A key fingerprint is the first 32 hex digits of BLAKE3(raw public key)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from manifests.errors import KeyFileError, SignatureError

DOMAIN = b"archiver-manifest-v1:"
# A signature object is ~250 bytes; anything much larger is not one and is refused
# without being parsed.
MAX_SIGNATURE_BYTES = 4096


@dataclass(frozen=True)
class Signature:
    manifest_id: str
    public_key: str   # raw 32-byte key, hex
    signature: str    # 64 bytes, hex

    @property
    def fingerprint(self) -> str:
        return fingerprint(bytes.fromhex(self.public_key))

    def to_json(self) -> bytes:
        return (json.dumps({"alg": "ed25519", "manifest": self.manifest_id, "public_key": self.public_key,
                            "signature": self.signature}, sort_keys=True) + "\n").encode()


def fingerprint(raw_public: bytes) -> str:
    return blake3.blake3(raw_public).hexdigest()[:32]


def keygen(path: str | os.PathLike) -> tuple[Path, Path]:
    """Write a new private key (PEM, mode 0600) at `path` and its public key at `path`.pub."""
    priv = Path(path)
    pub = priv.with_name(priv.name + ".pub")
    if priv.exists() or pub.exists():
        raise KeyFileError(priv if priv.exists() else pub, "refusing to overwrite an existing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pub.write_text(f"archiver-ed25519 {raw.hex()}\n")
    return priv, pub


def load_private(path: str | os.PathLike) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise KeyFileError(path, "no signing key there") from None
    except (ValueError, TypeError) as e:
        raise KeyFileError(path, f"not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(path, "not an Ed25519 key")
    return key


def load_public(path_or_hex: str) -> bytes:
    """A public key file written by keygen, or the 64-hex-digit key itself."""
    text = path_or_hex.strip()
    p = Path(text)
    if p.is_file():
        text = p.read_text().strip()
        if text.startswith("archiver-ed25519 "):
            text = text.split(None, 1)[1].strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(path_or_hex, "not a public key file or hex key") from None
    if len(raw) != 32:
        raise KeyFileError(path_or_hex, "not an Ed25519 public key (need 32 bytes)")
    return raw


def sign(key: Ed25519PrivateKey, mid: str) -> Signature:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Signature(mid, raw.hex(), key.sign(DOMAIN + mid.encode("ascii")).hex())


def parse_signature(data: bytes) -> Signature:
    """A signature object from the store; anything else (too large, not JSON, nested
    deeper than the parser's stack, wrong fields) is a SignatureError, never a crash."""
    if len(data) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"malformed signature object: {len(data)} bytes (at most {MAX_SIGNATURE_BYTES})")
    try:
        obj = json.loads(data)
        sig = Signature(obj["manifest"], obj["public_key"], obj["signature"])
        if obj.get("alg") != "ed25519" or not isinstance(sig.manifest_id, str) \
                or len(bytes.fromhex(sig.public_key)) != 32 or len(bytes.fromhex(sig.signature)) != 64:
            raise ValueError("bad fields")
        return sig
    except RecursionError:
        raise SignatureError("malformed signature object: JSON nested too deeply") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SignatureError(f"malformed signature object: {e}") from None


def check(sig: Signature, mid: str) -> bool:
    """True if `sig` is a valid signature of manifest `mid` by the key it names."""
    if sig.manifest_id != mid:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(sig.public_key)).verify(
            bytes.fromhex(sig.signature), DOMAIN + mid.encode("ascii"))
        return True
    except (InvalidSignature, ValueError):
        return False


def sign_message(key: Ed25519PrivateKey, message: bytes) -> tuple[str, str]:
    """(public key hex, signature hex) of an arbitrary, already domain-separated message
    (event records use this; manifests use `sign`)."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex(), key.sign(message).hex()


def check_message(public_key_hex: str, signature_hex: str, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)).verify(bytes.fromhex(signature_hex), message)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False
