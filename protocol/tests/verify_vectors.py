#!/usr/bin/env python3
"""Recomputes protocol/tests/vectors.json with implementations rigd did not write.

From the raw receipt fields alone:
  - every leaf (hashStruct(Receipt)), the domain separator, hashStruct(ReceiptBatch) and the
    signing digest with eth-account's EIP-712 encoder (the type strings come from eth-account
    too, from the field lists below, which restate protocol/src/receipt.rs);
  - the Merkle root and every inclusion proof with the sorted-pair Keccak tree below
    (OpenZeppelin's commutative hashing, an odd node carried up);
  - the secp256k1 signer with eth-account's recovery (v must be 27/28, s low), and the
    signature itself with eth-account's RFC 6979 signer and the test key;
  - the P-256 signature with cryptography (OpenSSL) over the 32-byte digest as a prehash,
    and the signature itself with OpenSSL's RFC 6979 signer and the test key (s made low);
  - the SHA-256 unit input and output digests from the layouts in protocol/src/units.rs;
  - every credit statement's struct hash and digest (eth-account's EIP-712 encoder) and its
    signer, recovered to the secp256k1 test key standing in for the network's statement key;
  - every ReceiptBatch frame, with the strict postcard decoder and encoder below that follow
    docs/frames.md (not rigd's code): the frame decodes to exactly the fields listed beside it,
    those fields encode back to exactly its bytes, each carried output hashes to its
    receipt's output digest, and every frame of refusedFrames is refused for its rule.

Usage: verify_vectors.py [vectors.json]. Exits 1 naming every mismatch.
"""

import hashlib
import json
import struct
import sys
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils import keccak, to_checksum_address

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

DOMAIN_NAME, DOMAIN_VERSION = "rigd", "1"
TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "Receipt": [
        {"name": "rig", "type": "string"},
        {"name": "seq", "type": "uint64"},
        {"name": "card", "type": "string"},
        {"name": "job", "type": "string"},
        {"name": "unit", "type": "uint64"},
        {"name": "attempt", "type": "uint32"},
        {"name": "work", "type": "uint64"},
        {"name": "inputDigest", "type": "bytes32"},
        {"name": "outputDigest", "type": "bytes32"},
        {"name": "startedMs", "type": "uint64"},
        {"name": "finishedMs", "type": "uint64"},
        {"name": "governorLevel", "type": "uint8"},
    ],
    "ReceiptBatch": [
        {"name": "rig", "type": "string"},
        {"name": "firstSeq", "type": "uint64"},
        {"name": "count", "type": "uint32"},
        {"name": "root", "type": "bytes32"},
    ],
    "Credit": [
        {"name": "rig", "type": "string"},
        {"name": "lastSeq", "type": "uint64"},
        {"name": "beforeMs", "type": "uint64"},
        {"name": "creditedTotal", "type": "uint256"},
    ],
}
UINT_BITS = {"uint8": 8, "uint32": 32, "uint64": 64, "uint256": 256}

errors: list[str] = []


def check(what: str, recomputed, recorded) -> None:
    if recomputed != recorded:
        errors.append(f"{what}: vectors.json has {recorded!r}, recomputed {recomputed!r}")


def require(what: str, ok: bool) -> None:
    if not ok:
        errors.append(f"{what}: no")


def unhex(s: str) -> bytes:
    if not s.startswith("0x"):
        raise ValueError(f"{s!r} is not 0x-prefixed hex")
    return bytes.fromhex(s[2:])


def hx(b: bytes) -> str:
    return "0x" + bytes(b).hex()


def eip712_domain(d: dict) -> dict:
    """The EIP-712 domain of a vectors.json domain object (chainId, verifyingContract)."""
    contract = unhex(d["verifyingContract"])
    if len(contract) != 20:
        raise ValueError(f"verifyingContract is {len(contract)} bytes, not 20")
    return {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": d["chainId"],
            "verifyingContract": to_checksum_address(contract)}


def typed(primary: str, raw: dict, domain: dict):
    """eth-account's SignableMessage (header = domain separator, body = hashStruct)."""
    message = {}
    for field in TYPES[primary]:
        value = raw[field["name"]]
        if field["type"] == "bytes32":
            value = unhex(value)
            if len(value) != 32:
                raise ValueError(f"{field['name']} is {len(value)} bytes, not 32")
        elif field["type"] in UINT_BITS:
            if not isinstance(value, int) or not 0 <= value < 2 ** UINT_BITS[field["type"]]:
                raise ValueError(f"{field['name']} = {value!r} is not a {field['type']}")
        message[field["name"]] = value
    types = {"EIP712Domain": TYPES["EIP712Domain"], primary: TYPES[primary]}
    return encode_typed_data(
        full_message={"types": types, "primaryType": primary, "domain": domain, "message": message}
    )


def node(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a <= b else keccak(b + a)


def merkle_levels(leaves: list[bytes]) -> list[list[bytes]]:
    levels = [leaves]
    while len(levels[-1]) > 1:
        lv = levels[-1]
        levels.append([node(lv[i], lv[i + 1]) if i + 1 < len(lv) else lv[i] for i in range(0, len(lv), 2)])
    return levels


def merkle_proof(levels: list[list[bytes]], index: int) -> list[bytes]:
    proof = []
    for lv in levels[:-1]:
        if index ^ 1 < len(lv):
            proof.append(lv[index ^ 1])
        index //= 2
    return proof


def f32(bits: str) -> bytes:
    return struct.pack("<I", int(bits, 16))


def check_types(v: dict) -> None:
    # eth-account's own rendering of the type strings from the field lists above.
    from eth_account._utils.encode_typed_data.encoding_and_hashing import encode_type

    for name in ("Receipt", "ReceiptBatch", "Credit"):
        rendered = encode_type(name, TYPES)
        check(f"{name} type string", rendered, v["types"][name]["typeString"])
        check(f"{name} type hash", hx(keccak(text=rendered)), v["types"][name]["typeHash"])
    rendered = encode_type("EIP712Domain", TYPES)
    check("EIP712Domain type string", rendered, v["domain"]["typeString"])
    check("EIP712Domain type hash", hx(keccak(text=rendered)), v["domain"]["typeHash"])
    check("domain name and version", (DOMAIN_NAME, DOMAIN_VERSION), (v["domain"]["name"], v["domain"]["version"]))
    empty = {"rig": "", "firstSeq": 0, "count": 0, "root": "0x" + "00" * 32}
    for d in v["domain"]["examples"]:
        separator = typed("ReceiptBatch", empty, eip712_domain(d)).header
        check(f"domain separator of chain {d['chainId']}", hx(separator), d["separator"])
    require("the example domains differ", len({d["separator"] for d in v["domain"]["examples"]}) > 1)


def check_credit(c: dict, address: str) -> None:
    """A credit statement: its struct hash and digest from eth-account's encoder, and the
    network's signature recovered to the statement key (the secp256k1 test key)."""
    name = c["name"]
    signable = typed("Credit", c, eip712_domain(c["domain"]))
    check(f"{name} domain separator", hx(signable.header), c["domain"]["separator"])
    check(f"{name} credit struct hash", hx(signable.body), c["structHash"])
    digest = bytes(_hash_eip191_message(signable))
    check(f"{name} signing digest", hx(digest), c["signingDigest"])
    sig = unhex(c["signature"])
    require(f"{name} signature is 65 bytes, v 27 or 28", len(sig) == 65 and sig[64:] in (b"\x1b", b"\x1c"))
    try:
        recovered = Account.recover_message(signable, signature=sig).lower()
    except Exception as e:  # noqa: BLE001 - any failure is a mismatch to report
        recovered = f"<recovery failed: {e}>"
    check(f"{name} statement signer recovered from the signature", recovered, address)


def check_keys(v: dict) -> tuple[str, ec.EllipticCurvePrivateKey]:
    k = v["keys"]
    address = Account.from_key(unhex(k["secp256k1"]["privateKey"])).address.lower()
    check("secp256k1 test key address", address, k["secp256k1"]["address"])
    p_priv = ec.derive_private_key(int(k["p256"]["privateKey"], 16), ec.SECP256R1())
    p_pub = p_priv.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    check("P-256 test public key", hx(p_pub), k["p256"]["publicKey"])
    return address, p_priv


def check_batch(b: dict, keys: dict, address: str, p_priv: ec.EllipticCurvePrivateKey) -> None:
    name = f"batch {b['name']!r}"
    receipts = b["receipts"]
    domain = eip712_domain(b["header"]["domain"])
    leaves = []
    for i, r in enumerate(receipts):
        signable = typed("Receipt", r, domain)
        check(f"{name} receipt {i} domain separator", hx(signable.header), b["domainSeparator"])
        leaves.append(bytes(signable.body))
        check(f"{name} receipt {i} leaf", hx(signable.body), r["leaf"])
        check(f"{name} receipt {i} seq", receipts[0]["seq"] + i, r["seq"])
        check(f"{name} receipt {i} rig", b["header"]["rig"], r["rig"])
    levels = merkle_levels(leaves)
    root = levels[-1][0]
    check(f"{name} root", hx(root), b["root"])
    check(f"{name} header root", hx(root), b["header"]["root"])
    check(f"{name} header firstSeq", receipts[0]["seq"], b["header"]["firstSeq"])
    check(f"{name} header count", len(receipts), b["header"]["count"])
    for i, r in enumerate(receipts):
        proof = merkle_proof(levels, i)
        check(f"{name} receipt {i} proof", [hx(p) for p in proof], r["proof"])
        acc = unhex(r["leaf"])
        for sibling in r["proof"]:
            acc = node(acc, unhex(sibling))
        check(f"{name} receipt {i} proof folds into the root", hx(acc), b["root"])

    signable = typed("ReceiptBatch", b["header"], domain)
    check(f"{name} domain separator", hx(signable.header), b["domainSeparator"])
    check(f"{name} header domain separator", hx(signable.header), b["header"]["domain"]["separator"])
    check(f"{name} batch struct hash", hx(signable.body), b["batchStructHash"])
    digest = bytes(_hash_eip191_message(signable))
    check(f"{name} signing digest", hx(digest), b["signingDigest"])

    sig = unhex(b["secp256k1"]["signature"])
    check(f"{name} secp256k1 signature length", 65, len(sig))
    require(f"{name} secp256k1 v is 27 or 28", sig[64:] in (b"\x1b", b"\x1c"))
    require(f"{name} secp256k1 s is low", int.from_bytes(sig[32:64], "big") <= SECP256K1_N // 2)
    check(f"{name} secp256k1 address", address, b["secp256k1"]["address"])
    try:
        recovered = Account.recover_message(signable, signature=sig).lower()
    except Exception as e:  # noqa: BLE001 - any failure is a mismatch to report
        recovered = f"<recovery failed: {e}>"
    check(f"{name} secp256k1 signer recovered from the signature", recovered, b["secp256k1"]["address"])
    ours = Account.unsafe_sign_hash(digest, unhex(keys["secp256k1"]["privateKey"])).signature
    check(f"{name} secp256k1 signature (eth-account's RFC 6979 signature)", hx(ours), hx(sig))

    psig = unhex(b["p256"]["signature"])
    check(f"{name} P-256 signature length", 64, len(psig))
    p_pub = p_priv.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    check(f"{name} P-256 public key", hx(p_pub), b["p256"]["publicKey"])
    r_int, s_int = int.from_bytes(psig[:32], "big"), int.from_bytes(psig[32:], "big")
    require(f"{name} P-256 s is low", s_int <= P256_N // 2)
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unhex(b["p256"]["publicKey"]))
    try:
        key.verify(
            utils.encode_dss_signature(r_int, s_int), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))
        )
        ok = True
    except InvalidSignature:
        ok = False
    require(f"{name} P-256 signature verifies over the signing digest", ok)
    # OpenSSL's RFC 6979 signature with the test key, s then made low, is the same signature.
    der = p_priv.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()), deterministic_signing=True))
    r2, s2 = utils.decode_dss_signature(der)
    ours = r2.to_bytes(32, "big") + min(s2, P256_N - s2).to_bytes(32, "big")
    check(f"{name} P-256 signature (OpenSSL's RFC 6979 signature, low-s)", hx(ours), hx(psig))


WIRE_VERSION = 2
RECEIPT_BATCH_KIND = 4
MAX_BATCH = 4096
MAX_PROOF = 32


class Refused(Exception):
    """A frame refused, with the rule it breaks (the names used in refusedFrames)."""

    def __init__(self, rule: str, why: str):
        super().__init__(f"{rule}: {why}")
        self.rule = rule


class Reader:
    """Strict postcard: LEB128 varints in their shortest form, length-prefixed strings and
    sequences, fixed arrays as raw bytes, f32 as 4 little-endian bytes."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.at:
            raise Refused("malformed", f"{n} bytes wanted at offset {self.at}, {len(self.data) - self.at} left")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def varint(self, bits: int) -> int:
        value, shift, start = 0, 0, self.at
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift >= bits:
                raise Refused("malformed", f"varint at offset {start} runs past {bits} bits")
        if value >> bits:
            raise Refused("malformed", f"varint at offset {start} is over {bits} bits")
        if self.at - start > 1 and byte == 0:
            raise Refused("nonCanonical", f"varint at offset {start} is overlong")
        return value

    def seq_len(self) -> int:
        return self.varint(64)

    def string(self) -> str:
        raw = self.take(self.seq_len())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Refused("malformed", f"string is not UTF-8: {e}") from e

    def ident(self) -> str:
        """A rig id, card UUID or job id: 1 to 64 of [A-Za-z0-9._-]."""
        s = self.string()
        if not 1 <= len(s) <= 64 or not all(c.isascii() and (c.isalnum() or c in "._-") for c in s):
            raise Refused("malformed", f"identifier {s[:80]!r}")
        return s

    def f32_bits(self) -> str:
        return "0x%08x" % struct.unpack("<I", self.take(4))[0]


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_output(rd: Reader) -> dict:
    variant = rd.varint(32)
    if variant == 0:
        loss, samples = rd.f32_bits(), rd.varint(32)
        return {"kind": "mlp-grad", "lossSumBits": loss, "samples": samples,
                "gradSumBits": [rd.f32_bits() for _ in range(rd.seq_len())]}
    if variant == 1:
        return {"kind": "gemm-i8", "cDigest": hx(rd.take(32))}
    raise Refused("malformed", f"UnitOutput variant {variant}")


def encode_output(o: dict) -> bytes:
    if o["kind"] == "mlp-grad":
        return (varint(0) + f32(o["lossSumBits"]) + varint(o["samples"]) + varint(len(o["gradSumBits"]))
                + b"".join(f32(g) for g in o["gradSumBits"]))
    return varint(1) + unhex(o["cDigest"])


RECEIPT_FIELDS = [  # (JSON name, postcard type), in the order of protocol/src/receipt.rs
    ("rig", "str"), ("seq", 64), ("card", "str"), ("job", "str"), ("unit", 64), ("attempt", 32),
    ("work", 64), ("inputDigest", "b32"), ("outputDigest", "b32"), ("startedMs", 64),
    ("finishedMs", 64), ("governorLevel", "u8"),
]


def decode_batch_frame(frame: bytes) -> dict:
    """A ReceiptBatch frame to {header, signature, receipts: [fields + output + proof]}."""
    if len(frame) < 2:
        raise Refused("malformed", "no room for the version and kind bytes")
    if frame[0] != WIRE_VERSION:
        raise Refused("version", f"version {frame[0]}")
    if frame[1] != RECEIPT_BATCH_KIND:
        raise Refused("kind", f"kind {frame[1]}")
    rd = Reader(frame[2:])
    header = {"rig": rd.ident(), "firstSeq": rd.varint(64), "count": rd.varint(32), "root": hx(rd.take(32)),
              "domain": {"chainId": rd.varint(64), "verifyingContract": hx(rd.take(20))}}
    signature = hx(rd.take(rd.seq_len()))
    receipts = []
    for _ in range(rd.seq_len()):
        r = {}
        for name, kind in RECEIPT_FIELDS:
            if kind == "str":
                r[name] = rd.ident()
            elif kind == "b32":
                r[name] = hx(rd.take(32))
            elif kind == "u8":
                r[name] = rd.take(1)[0]
            else:
                r[name] = rd.varint(kind)
        r["proof"] = [hx(rd.take(32)) for _ in range(rd.seq_len())]
        r["output"] = decode_output(rd)
        receipts.append(r)
    if rd.at != len(rd.data):
        raise Refused("trailing", f"{len(rd.data) - rd.at} bytes after the message")
    if len(receipts) != header["count"] or len(receipts) > MAX_BATCH:
        raise Refused("invalid", f"header counts {header['count']}, batch carries {len(receipts)}")
    for i, r in enumerate(receipts):
        if r["rig"] != header["rig"] or r["seq"] != header["firstSeq"] + i or len(r["proof"]) > MAX_PROOF:
            raise Refused("invalid", f"receipt {i} does not follow the header")
    return {"header": header, "signature": signature, "receipts": receipts}


def encode_batch_frame(header: dict, signature: bytes, receipts: list[dict]) -> bytes:
    out = bytes([WIRE_VERSION, RECEIPT_BATCH_KIND])
    text = lambda s: varint(len(s.encode())) + s.encode()  # noqa: E731
    out += text(header["rig"]) + varint(header["firstSeq"]) + varint(header["count"]) + unhex(header["root"])
    out += varint(header["domain"]["chainId"]) + unhex(header["domain"]["verifyingContract"])
    out += varint(len(signature)) + signature + varint(len(receipts))
    for r in receipts:
        for name, kind in RECEIPT_FIELDS:
            value = r[name]
            out += text(value) if kind == "str" else unhex(value) if kind == "b32" else (
                bytes([value]) if kind == "u8" else varint(value))
        out += varint(len(r["proof"])) + b"".join(unhex(p) for p in r["proof"]) + encode_output(r["output"])
    return out


def output_digest(o: dict) -> str:
    if o["kind"] == "mlp-grad":
        buf = b"rigd/mlp-grad/out/v1" + f32(o["lossSumBits"]) + struct.pack("<I", o["samples"])
        buf += struct.pack("<Q", len(o["gradSumBits"])) + b"".join(f32(g) for g in o["gradSumBits"])
    else:
        buf = b"rigd/gemm-i8/out/v1" + unhex(o["cDigest"])
    return hx(hashlib.sha256(buf).digest())


def check_frame(b: dict) -> None:
    name = f"batch {b['name']!r} frame"
    frame = unhex(b["frame"])
    try:
        decoded = decode_batch_frame(frame)
    except Refused as e:
        errors.append(f"{name}: refused ({e})")
        return
    recorded = dict(b["header"], domain={k: b["header"]["domain"][k] for k in ("chainId", "verifyingContract")})
    check(f"{name} header", decoded["header"], recorded)
    check(f"{name} signature (the secp256k1 one)", decoded["signature"], b["secp256k1"]["signature"])
    check(f"{name} receipt count", len(decoded["receipts"]), len(b["receipts"]))
    for i, (r, d) in enumerate(zip(b["receipts"], decoded["receipts"])):
        for field in [n for n, _ in RECEIPT_FIELDS] + ["proof", "output"]:
            check(f"{name} receipt {i} {field}", d[field], r[field])
        check(f"{name} receipt {i} output hashes to its output digest", output_digest(r["output"]), r["outputDigest"])
    again = encode_batch_frame(b["header"], unhex(b["secp256k1"]["signature"]), b["receipts"])
    require(f"{name} bytes encoded from the fields are the frame", hx(again) == b["frame"])


def check_refused(f: dict) -> None:
    try:
        decode_batch_frame(unhex(f["frame"]))
        errors.append(f"refused frame {f['name']!r}: decodes")
    except Refused as e:
        check(f"refused frame {f['name']!r} rule", e.rule, f["rule"])


def check_unit(u: dict) -> None:
    i, o, kind = u["input"], u["output"], u["kind"]
    if kind == "mlp-grad":
        buf = b"rigd/mlp-grad/in/v1" + struct.pack("<3I", *i["shape"])
        buf += struct.pack("<Q", len(i["paramsBits"])) + b"".join(f32(p) for p in i["paramsBits"])
        buf += struct.pack("<QI", i["dataSeed"], i["dataClasses"]) + f32(i["dataSpreadBits"])
        buf += struct.pack("<QI", i["start"], i["count"])
        check("mlp-grad input digest", hx(hashlib.sha256(buf).digest()), u["inputDigest"])
        buf = b"rigd/mlp-grad/out/v1" + f32(o["lossSumBits"]) + struct.pack("<I", o["samples"])
        buf += struct.pack("<Q", len(o["gradSumBits"])) + b"".join(f32(g) for g in o["gradSumBits"])
        check("mlp-grad output digest", hx(hashlib.sha256(buf).digest()), u["outputDigest"])
    elif kind == "gemm-i8":
        buf = b"rigd/gemm-i8/in/v1" + struct.pack("<Q3I", i["seed"], i["m"], i["n"], i["k"])
        check("gemm-i8 input digest", hx(hashlib.sha256(buf).digest()), u["inputDigest"])
        check("gemm-i8 C entries (m * n)", i["m"] * i["n"], len(o["c"]))
        c = b"rigd/gemm-i8/c/v1" + struct.pack(f"<{len(o['c'])}i", *o["c"])
        check("gemm-i8 C digest", hx(hashlib.sha256(c).digest()), o["cDigest"])
        buf = b"rigd/gemm-i8/out/v1" + unhex(o["cDigest"])
        check("gemm-i8 output digest", hx(hashlib.sha256(buf).digest()), u["outputDigest"])
    else:
        errors.append(f"unknown unit kind {kind!r}")


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("vectors.json"))
    v = json.loads(path.read_text())
    try:
        check_types(v)
        address, p_priv = check_keys(v)
        for b in v["batches"]:
            check_batch(b, v["keys"], address, p_priv)
            check_frame(b)
        for c in v["credits"]:
            check_credit(c, address)
        require("credit statements are covered", len(v["credits"]) > 0)
        for f in v["refusedFrames"]:
            check_refused(f)
        for u in v["units"]:
            check_unit(u)
        kinds = sorted({u["kind"] for u in v["units"]})
        if kinds != ["gemm-i8", "mlp-grad"]:
            errors.append(f"unit examples cover {kinds}, expected gemm-i8 and mlp-grad")
    except (KeyError, ValueError, TypeError, struct.error) as e:
        errors.append(f"malformed vectors: {type(e).__name__}: {e}")
    if errors:
        print(f"verify_vectors: {path}: {len(errors)} mismatch(es):", file=sys.stderr)
        for e in errors:
            print(f"  {e}", file=sys.stderr)
        return 1
    n = len(v["batches"])
    leaves = sum(len(b["receipts"]) for b in v["batches"])
    print(
        f"{n} vectors ({leaves} receipts, {len(v['units'])} unit kinds): leaves, roots, proofs, "
        f"digests, secp256k1 recovery, P-256 verification, frame bytes and {len(v['credits'])} "
        "credit statements all match; "
        f"{len(v['refusedFrames'])} bad frames refused for their rules"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
