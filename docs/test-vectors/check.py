#!/usr/bin/env python3
"""Checks the test vectors against an independent implementation of the specs
(docs/formats/vault-header.md and docs/formats/file-stream.md), written from
the documents with Python's `cryptography` and `hashlib`, not from the Rust.

Argon2id slots are skipped (no Argon2 in the standard library); the Rust test
`vectors_match_the_spec` opens them. Exit status 0 means every check passed.
"""
import hashlib
import hmac
import json
import pathlib
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HERE = pathlib.Path(__file__).parent


def hkdf(ikm, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def check_header():
    v = json.loads((HERE / "vault-header-v1.json").read_text())
    h = bytes.fromhex(v["header"])
    key, vid = bytes.fromhex(v["vault_key"]), bytes.fromhex(v["vault_id"])
    assert h[:8] == b"\x89COFFER\n" and h[8:10] == b"\x01\x00" and h[12:28] == vid
    assert hashlib.sha256(h[:-32]).digest() == h[-32:], "checksum"
    L = int.from_bytes(h[1760:1764], "little")
    assert len(h) == 1840 + L, "length"

    def subkey(label, app=None):
        info = b"coffer/v1/" + label.encode() + (b"\0" + app.encode() if app else b"")
        return hkdf(key, vid, info)

    for s in v["subkeys"]:
        assert subkey(s["label"], s["app"]).hex() == s["key"], s["label"]
    mac = hmac.new(subkey("header-mac"), h[: 1776 + L], hashlib.sha256).digest()
    assert mac == h[1776 + L : 1808 + L], "header MAC"
    meta = AESGCM(subkey("header-meta")).decrypt(h[1764:1776], h[1776 : 1776 + L], h[:1764])
    assert meta[0] == 1 and meta[17] == len(v["slots"]), "metadata"

    for s in v["slots"]:
        i = s["index"]
        slot = h[32 + 108 * i : 32 + 108 * (i + 1)]
        assert slot.hex() == s["encoded"], f"slot {i} bytes"
        salt, nonce, wrapped = slot[16:48], slot[48:60], slot[60:108]
        kdf = s["kdf"]["algorithm"]
        secret = s["secret"].encode()  # the vector's passphrases are already NFC
        if kdf == "argon2id":
            continue
        if kdf == "pbkdf2-sha256":
            kek = hashlib.pbkdf2_hmac("sha256", secret, salt, s["kdf"]["iterations"], 32)
        elif kdf == "scrypt":
            k = s["kdf"]
            kek = hashlib.scrypt(secret, salt=salt, n=2 ** k["log_n"], r=k["r"], p=k["p"], dklen=32)
        else:
            kek = hkdf(bytes.fromhex(s["recovery_key_bytes"]), salt, b"coffer/v1/slot-kek/recovery")
        opened = AESGCM(kek).decrypt(nonce, wrapped, b"coffer/v1/slot" + vid + slot[:48])
        assert opened == key, f"slot {i} ({kdf})"
    print("vault-header-v1.json: OK")


def check_file():
    v = json.loads((HERE / "file-stream-v1.json").read_text())
    fk = hkdf(bytes.fromhex(v["files_subkey"]), bytes.fromhex(v["salt"]), b"coffer/v1/file-key")
    assert fk.hex() == v["file_key"], "file key"
    header = bytes.fromhex(v["header"])
    assert header == b"\x89CFILE\r\n" + b"\x01\x00\x01\x10" + bytes.fromhex(v["salt"])
    pt = bytes(i % 251 for i in range(65536 + 100))
    aead = AESGCM(fk)
    c0 = aead.encrypt(bytes.fromhex(v["chunk0_nonce"]), pt[:65536], header)
    c1 = aead.encrypt(bytes.fromhex(v["chunk1_nonce"]), pt[65536:], header)
    assert c1.hex() == v["chunk1_sealed"], "last chunk"
    f = header + c0 + c1
    assert len(f) == v["file_len"] and hashlib.sha256(f).hexdigest() == v["file_sha256"], "file"
    print("file-stream-v1.json: OK")


if __name__ == "__main__":
    check_header()
    check_file()
    sys.exit(0)
