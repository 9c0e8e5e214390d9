"""Firmware signatures (functions/ota/signing.py): what ota-api records for an upload, checked
against openssl's own ed25519 signatures."""

from __future__ import annotations

import base64
import io
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from functions.ota import signing
from functions.runtime import settings
from functions.runtime.errors import InvalidData, SettingsError

FIRMWARE = b"\x7fELF firmware image" * 100


def seed(key: Ed25519PrivateKey) -> str:
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    monkeypatch.setenv("OTA_FIRMWARE_SIGNING_KEY", seed(key))
    monkeypatch.delenv("OTA_FIRMWARE_PUBLIC_KEY", raising=False)
    settings.reset()
    return key


def test_an_unsigned_upload_is_signed_with_the_signing_key(keys: Ed25519PrivateKey) -> None:
    file = io.BytesIO(FIRMWARE)
    signature = signing.signature_for(file, None)
    assert signature is not None and file.tell() == 0  # rewound for the upload
    keys.public_key().verify(base64.b64decode(signature), FIRMWARE)
    assert (
        signing.public_pem()
        == keys.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_an_openssl_signature_is_kept_and_a_wrong_one_refused(
    keys: Ed25519PrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented recipe (docs/ota.md): `openssl pkeyutl -sign -rawin`."""
    pem = tmp_path / "key.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(pem)], check=True)
    image = tmp_path / "fw.bin"
    image.write_bytes(FIRMWARE)
    made = subprocess.run(
        ["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", str(pem), "-in", str(image)],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    monkeypatch.setenv("OTA_FIRMWARE_SIGNING_KEY", pem.read_text())  # PEM works too
    settings.reset()
    provided = base64.b64encode(made).decode()
    assert signing.signature_for(io.BytesIO(FIRMWARE), provided) == provided
    with pytest.raises(InvalidData, match="does not verify") as refused:
        signing.signature_for(io.BytesIO(FIRMWARE + b"!"), provided)
    assert refused.value.field == signing.HEADER


@pytest.mark.parametrize("provided", ["not base64!", base64.b64encode(b"short").decode(), ""])
def test_a_signature_that_is_no_signature_is_a_422(keys: Ed25519PrivateKey, provided: str) -> None:
    with pytest.raises(InvalidData, match="64-byte ed25519 signature"):
        signing.signature_for(io.BytesIO(FIRMWARE), provided)


def test_without_keys_firmware_is_unsigned_and_a_signature_cannot_be_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTA_FIRMWARE_SIGNING_KEY", "")  # an empty setting is no key
    monkeypatch.delenv("OTA_FIRMWARE_PUBLIC_KEY", raising=False)
    settings.reset()
    assert signing.signature_for(io.BytesIO(FIRMWARE), None) is None
    assert signing.public_pem() is None
    signature = base64.b64encode(Ed25519PrivateKey.generate().sign(FIRMWARE)).decode()
    with pytest.raises(InvalidData, match="no OTA_FIRMWARE_PUBLIC_KEY"):
        signing.signature_for(io.BytesIO(FIRMWARE), signature)


def test_a_public_key_alone_checks_provided_signatures(monkeypatch: pytest.MonkeyPatch) -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    monkeypatch.delenv("OTA_FIRMWARE_SIGNING_KEY", raising=False)
    monkeypatch.setenv("OTA_FIRMWARE_PUBLIC_KEY", base64.b64encode(raw).decode())
    settings.reset()
    signature = base64.b64encode(key.sign(FIRMWARE)).decode()
    assert signing.signature_for(io.BytesIO(FIRMWARE), signature) == signature


@pytest.mark.parametrize("name", ["OTA_FIRMWARE_SIGNING_KEY", "OTA_FIRMWARE_PUBLIC_KEY"])
def test_a_malformed_key_names_its_setting(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "c2hvcnQ=")
    settings.reset()
    with pytest.raises(SettingsError) as error:
        signing.verifier()
    assert error.value.setting == name
