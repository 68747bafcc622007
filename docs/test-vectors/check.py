#!/usr/bin/env python3
"""Checks the test vectors against an independent implementation of the specs
(docs/formats/vault-header.md, docs/formats/file-stream.md,
docs/formats/audit-log.md, and the control plane's server-seal.md, policy.md
and data-batch.md), written from
the documents with Python's `cryptography` and `hashlib`, not from the Rust.

Argon2id slots are skipped (no Argon2 in the standard library); the Rust test
`vectors_match_the_spec` opens them. Exit status 0 means every check passed.
"""
import hashlib
import hmac
import json
import pathlib
import sys

import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
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


def check_audit():
    v = json.loads((HERE / "audit-log-v1.json").read_text())
    log_key, mac_key = bytes.fromhex(v["log_key"]), bytes.fromhex(v["mac_key"])
    log = bytes.fromhex(v["audit_log"])
    assert log[:10] == b"\x89CFAUDT\n\x01\x00", "log header"
    at, prev, label = 10, bytes(32), b"coffer/v1/audit-entry"
    for seq, (event, nonce) in enumerate(zip(v["events"], v["nonces"])):
        nonce = bytes.fromhex(nonce)
        assert int.from_bytes(log[at : at + 8], "little") == seq, f"seq {seq}"
        n = int.from_bytes(log[at + 8 : at + 12], "little")
        assert log[at + 12 : at + 24] == nonce, f"nonce {seq}"
        ct = log[at + 24 : at + 24 + n]
        mac = log[at + 24 + n : at + 56 + n]
        body = label + prev + seq.to_bytes(8, "little") + n.to_bytes(4, "little") + nonce + ct
        assert hmac.new(mac_key, body, hashlib.sha256).digest() == mac, f"mac {seq}"
        aad = label + seq.to_bytes(8, "little")
        assert AESGCM(log_key).decrypt(nonce, ct, aad) == event.encode(), f"event {seq}"
        at, prev = at + 56 + n, mac
    assert at == len(log), "trailing bytes"
    head = bytes.fromhex(v["audit_head"])
    body = b"\x89CFAHED\n\x01\x00" + len(v["events"]).to_bytes(8, "little")
    body += len(log).to_bytes(8, "little") + prev
    assert head[:-32] == body, "anchor fields"
    tag = hmac.new(mac_key, b"coffer/v1/audit-head" + body, hashlib.sha256).digest()
    assert head[-32:] == tag, "anchor tag"
    print("audit-log-v1.json: OK")


def cbor_decode(data):
    """A CBOR (RFC 8949) decoder for the data model of a batch: unsigned and
    negative integers, text, arrays, maps, false/true/null and floats."""

    def item(at):
        head = data[at]
        major, info = head >> 5, head & 0x1F
        at += 1
        if major == 7:
            simple = {20: False, 21: True, 22: None}
            if info in simple:
                return simple[info], at
            size = {25: 2, 26: 4, 27: 8}[info]
            fmt = {2: ">e", 4: ">f", 8: ">d"}[size]
            return struct.unpack(fmt, data[at : at + size])[0], at + size
        if info < 24:
            arg = info
        else:
            size = {24: 1, 25: 2, 26: 4, 27: 8}[info]
            arg = int.from_bytes(data[at : at + size], "big")
            at += size
        if major == 0:
            return arg, at
        if major == 1:
            return -1 - arg, at
        if major == 3:
            return data[at : at + arg].decode("utf-8"), at + arg
        if major == 4:
            out = []
            for _ in range(arg):
                value, at = item(at)
                out.append(value)
            return out, at
        if major == 5:
            out = {}
            for _ in range(arg):
                key, at = item(at)
                value, at = item(at)
                out[key] = value
            return out, at
        raise ValueError(f"CBOR major type {major} is not part of a batch")

    value, end = item(0)
    assert end == len(data), "trailing CBOR bytes"
    return value


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check_control_plane():
    v = json.loads((HERE / "control-plane-v1.json").read_text())
    # Sealed value: HKDF-SHA256 keys, then AES-256-GCM with the row context.
    s = v["seal"]
    master = bytes.fromhex(s["master_key"])
    key_id = HKDF(algorithm=hashes.SHA256(), length=8, salt=None, info=b"coffer-server key id v1").derive(master)
    seal_key = hkdf(master, None, b"coffer-server seal key v1")
    assert key_id.hex() == s["key_id"], "key id"
    sealed = bytes.fromhex(s["sealed"])
    assert sealed[0] == 1 and sealed[1:9] == key_id, "seal header"
    nonce = sealed[9:21]
    assert nonce.hex() == s["nonce"], "seal nonce"
    aad = b"coffer-server-seal/1\0" + key_id + s["context"].encode()
    assert AESGCM(seal_key).decrypt(nonce, sealed[21:], aad).hex() == s["plaintext"], "sealed value"
    audit_key = hkdf(master, None, b"coffer-server audit key v1")
    tag = hmac.new(audit_key, b"coffer-server audit mac v1\0" + s["audit_row_hash"].encode(), hashlib.sha256)
    assert s["audit_mac"] == key_id.hex() + ":" + tag.hexdigest(), "audit MAC"
    # Record seal: the data key sealed under the master key, then
    # AES-256-GCM under the data key with length-prefixed associated data;
    # the body MAC under an HKDF-derived key.
    r = v["record_seal"]
    data_key = bytes.fromhex(r["data_key"])
    sealed_dk = bytes.fromhex(r["sealed_data_key"])
    aad = b"coffer-server-seal/1\0" + key_id + r["data_key_context"].encode()
    assert AESGCM(seal_key).decrypt(sealed_dk[9:21], sealed_dk[21:], aad) == data_key, "sealed data key"

    def prefixed(*fields):
        return b"".join(len(f).to_bytes(4, "big") + f for f in fields)

    rec = bytes.fromhex(r["sealed"])
    assert rec[0] == 1 and rec[1:13].hex() == r["nonce"], "record seal header"
    aad = prefixed(b"coffer-record-seal/1", str(r["org_id"]).encode(), r["app"].encode(),
                   r["collection"].encode(), r["id"].encode(), r["revision"].encode())
    assert AESGCM(data_key).decrypt(rec[1:13], rec[13:], aad) == r["plaintext"].encode(), "record seal"
    mac_key = hkdf(data_key, None, b"coffer-record-mac/1")
    body = canonical_json(json.loads(r["plaintext"])["body"])
    tag = hmac.new(mac_key, prefixed(b"coffer-record-mac/1", r["app"].encode(), r["collection"].encode(), body), hashlib.sha256)
    assert tag.hexdigest() == r["body_mac"], "body MAC"
    # Blob seal: one piece of a synced file, AES-256-GCM under the data key
    # with length-prefixed associated data binding it to its place.
    bs = v["blob_seal"]
    piece = bytes.fromhex(bs["sealed"])
    assert piece[0] == 1 and piece[1:13].hex() == bs["nonce"], "blob seal header"
    aad = prefixed(b"coffer-blob-seal/1", str(bs["org_id"]).encode(), bs["app"].encode(),
                   bs["sha256"].encode(), bs["upload_id"].encode(), str(bs["size"]).encode(),
                   str(bs["piece_size"]).encode(), str(bs["index"]).encode())
    assert AESGCM(bytes.fromhex(bs["data_key"])).decrypt(piece[1:13], piece[13:], aad).hex() == bs["plaintext"], "blob seal"
    assert bs["object"] == "o%d/%s/%08d" % (bs["org_id"], bs["upload_id"], bs["index"]), "blob object name"
    # Policy: Ed25519 over the canonical document's exact bytes.
    p = v["policy"]
    signer = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(p["seed"]))
    public = signer.public_key().public_bytes_raw()
    assert public.hex() == p["public_key"], "policy public key"
    document = p["document"].encode()
    Ed25519PublicKey.from_public_bytes(public).verify(bytes.fromhex(p["signature"]), document)
    assert signer.sign(document).hex() == p["signature"], "policy signature"
    parsed = json.loads(document)
    assert canonical_json(parsed) == document, "policy document is canonical"
    assert parsed["format"] == "coffer-policy/1", "policy format"
    # Batch: the CBOR and the JSON carry the same batch; the digest is over
    # the readings in canonical JSON.
    b = v["batch"]
    from_cbor = cbor_decode(bytes.fromhex(b["cbor"]))
    from_json = json.loads(b["json"])
    assert from_cbor == from_json, "CBOR and JSON batches differ"
    digest = hashlib.sha256(canonical_json(from_json["readings"])).hexdigest()
    assert digest == b["digest"], "batch digest"
    print("control-plane-v1.json: OK")


if __name__ == "__main__":
    check_header()
    check_file()
    check_audit()
    check_control_plane()
    sys.exit(0)
