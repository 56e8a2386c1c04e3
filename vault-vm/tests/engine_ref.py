#!/usr/bin/env python3
"""Independent reference for the vmvault sector cipher engine (Python `cryptography`).

Reads one case per line on stdin:
    SPEC KEYHEX SECTOR_SIZE IV_LARGE(0|1) IV_OFFSET SECTOR DATAHEX
and prints per line: ENCRYPT(DATA)HEX DECRYPT(DATA)HEX

The dm-crypt IV rules are written here from scratch, not shared with the Rust code:
the 512-byte sector number s = SECTOR + IV_OFFSET (mod 2^64); sector i of the buffer has
IV sector s + i * (SECTOR_SIZE / 512), or with IV_LARGE (s >> log2(SECTOR_SIZE / 512)) + i;
plain keeps the low 32 bits, plain64 all 64 bits, both little endian in a zeroed 16-byte
block; essiv:sha256 encrypts that block with AES-256 keyed by SHA-256(volume key).
"""
import hashlib
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

M64 = (1 << 64) - 1


def run(encrypt, algo, mode, data):
    c = Cipher(algo, mode)
    ctx = c.encryptor() if encrypt else c.decryptor()
    return ctx.update(data) + ctx.finalize()


def xts_by_hand(encrypt, key, tweak, data):
    """XTS built from AES-ECB, for key sizes `cryptography` has no XTS for (2 x 192 bits)."""
    half = len(key) // 2
    k1, k2 = key[:half], key[half:]
    t = int.from_bytes(run(True, algorithms.AES(k2), modes.ECB(), tweak), "little")
    out = bytearray()
    for j in range(0, len(data), 16):
        tb = t.to_bytes(16, "little")
        x = bytes(a ^ b for a, b in zip(data[j:j + 16], tb))
        y = run(encrypt, algorithms.AES(k1), modes.ECB(), x)
        out += bytes(a ^ b for a, b in zip(y, tb))
        t = ((t << 1) ^ (0x87 if t >> 127 else 0)) & ((1 << 128) - 1)
    return bytes(out)


def sectors(spec, key, ss, large, iv_offset, sector, data, encrypt):
    canon = {
        "capi:xts(aes)-plain64": "aes-xts-plain64",
        "capi:xts(aes)-plain": "aes-xts-plain",
        "capi:cbc(aes)-essiv:sha256": "aes-cbc-essiv:sha256",
        "capi:cbc(aes)-plain64": "aes-cbc-plain64",
        "capi:cbc(aes)-plain": "aes-cbc-plain",
        "capi:ecb(aes)": "aes-ecb",
    }.get(spec, spec)
    parts = canon.split("-")
    mode = parts[1]
    ivmode = parts[2] if len(parts) > 2 else None
    per = ss // 512
    s = (sector + iv_offset) & M64
    out = bytearray()
    for i in range(len(data) // ss):
        chunk = data[i * ss:(i + 1) * ss]
        if large:
            ivs = ((s >> (per.bit_length() - 1)) + i) & M64
        else:
            ivs = (s + i * per) & M64
        if ivmode == "plain":
            ivs &= 0xFFFFFFFF
        iv = ivs.to_bytes(8, "little") + bytes(8)
        if ivmode == "essiv:sha256":
            salt = hashlib.sha256(key).digest()
            iv = run(True, algorithms.AES(salt), modes.ECB(), iv)
        if mode == "xts" and len(key) == 48:
            out += xts_by_hand(encrypt, key, iv, chunk)
        elif mode == "xts":
            out += run(encrypt, algorithms.AES(key), modes.XTS(iv), chunk)
        elif mode == "cbc":
            out += run(encrypt, algorithms.AES(key), modes.CBC(iv), chunk)
        elif mode == "ecb":
            out += run(encrypt, algorithms.AES(key), modes.ECB(), chunk)
        else:
            raise SystemExit("unknown mode " + mode)
    return bytes(out)


def main():
    for line in sys.stdin:
        f = line.split()
        if not f:
            continue
        spec, key, ss, large, off, sector, data = f
        key, data = bytes.fromhex(key), bytes.fromhex(data)
        args = (spec, key, int(ss), large == "1", int(off), int(sector), data)
        enc = sectors(*args, True)
        dec = sectors(*args, False)
        sys.stdout.write(enc.hex() + " " + dec.hex() + "\n")


if __name__ == "__main__":
    main()
