"""Firmware signatures: a detached ed25519 signature over a firmware's bytes, base64 in its row
and in every OTA command, which a device checks with the public key before it flashes.

The signature is what `openssl pkeyutl -sign -rawin -inkey key.pem -in fw.bin | base64 -w0`
makes. `OTA_FIRMWARE_SIGNING_KEY` (PEM PKCS#8, or base64 of the raw 32-byte seed) signs an
upload that comes without one; `OTA_FIRMWARE_PUBLIC_KEY` (PEM, or base64 of the raw 32 bytes;
default: the signing key's) checks one that comes with it. With neither, firmwares are unsigned.
"""

from __future__ import annotations

import base64
import binascii
from typing import IO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from functions.ota import settings as ota_settings
from functions.runtime.errors import InvalidData, SettingsError

HEADER = "x-firmware-signature"
SIGNATURE_BYTES = 64


def _decoded(text: str) -> bytes:
    """The bytes of a base64 text; empty when it is none."""
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b""


def _raw(text: str, setting: str) -> bytes:
    raw = _decoded(text)
    if len(raw) != 32:
        raise SettingsError(setting, "neither PEM nor the base64 of a raw 32-byte ed25519 key")
    return raw


def private_key(text: str) -> Ed25519PrivateKey:
    if text.lstrip().startswith("-----BEGIN"):
        key = serialization.load_pem_private_key(text.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SettingsError("OTA_FIRMWARE_SIGNING_KEY", "not an ed25519 key")
        return key
    return Ed25519PrivateKey.from_private_bytes(_raw(text, "OTA_FIRMWARE_SIGNING_KEY"))


def public_key(text: str) -> Ed25519PublicKey:
    if text.lstrip().startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise SettingsError("OTA_FIRMWARE_PUBLIC_KEY", "not an ed25519 key")
        return key
    return Ed25519PublicKey.from_public_bytes(_raw(text, "OTA_FIRMWARE_PUBLIC_KEY"))


def _signer() -> Ed25519PrivateKey | None:
    secret = ota_settings.ota().firmware_signing_key
    text = secret.get_secret_value() if secret else ""
    return private_key(text) if text.strip() else None  # empty: not set


def verifier() -> Ed25519PublicKey | None:
    """The key provided signatures are checked with (and devices are given)."""
    configured = ota_settings.ota().firmware_public_key
    if configured:
        return public_key(configured)
    signer = _signer()
    return signer.public_key() if signer else None


def public_pem() -> str | None:
    key = verifier()
    if key is None:
        return None
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def verifies(key: Ed25519PublicKey, signature: str, data: bytes) -> bool:
    try:
        key.verify(_decoded(signature), data)
    except InvalidSignature:
        return False
    return True


def signature_for(file: IO[bytes], provided: str | None) -> str | None:
    """The signature to record for the firmware in `file` (rewound after): `provided` once it
    verifies, else one made with the signing key, else None (no key: unsigned)."""
    data = file.read()
    file.seek(0)
    if provided is not None:
        raw = _decoded(provided)
        if len(raw) != SIGNATURE_BYTES:
            raise InvalidData("not the base64 of a 64-byte ed25519 signature", field=HEADER)
        key = verifier()
        if key is None:
            raise InvalidData(
                "no OTA_FIRMWARE_PUBLIC_KEY (or signing key) to check the signature with",
                field=HEADER,
            )
        signature = base64.b64encode(raw).decode()
        if not verifies(key, signature, data):
            raise InvalidData("the signature does not verify with the firmware key", field=HEADER)
        return signature
    signer = _signer()
    return base64.b64encode(signer.sign(data)).decode() if signer else None
