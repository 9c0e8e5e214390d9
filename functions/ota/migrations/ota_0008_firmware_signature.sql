-- A detached ed25519 signature of each firmware's bytes, base64 (functions/ota/signing.py);
-- NULL for a firmware uploaded unsigned (no signing key configured).
ALTER TABLE ota.firmwares ADD COLUMN signature text;
