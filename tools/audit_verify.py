#!/usr/bin/env python3
"""An auditor's verifier of the gateway's signed checkpoints and Merkle proofs, written apart
from the gateway (the standard library and ``cryptography`` only; nothing of ``gateway`` is
imported), so the proofs need not be trusted to the gateway's own code.

    audit_verify.py checkpoint  --vkey VKEY CHECKPOINT
    audit_verify.py inclusion   --vkey VKEY --checkpoint CHECKPOINT PROOFS
    audit_verify.py consistency --vkey VKEY --old CHECKPOINT --new CHECKPOINT PROOF

CHECKPOINT: a C2SP signed note whose text is a C2SP tlog-checkpoint (origin, tree size,
base64 root hash). VKEY: the signer's verifier key, ``<name>+<hex key id>+<base64 key>``
(Ed25519). PROOFS: JSON, one object per line, each ``{"index": N, "leaf_hash": "<hex>",
"hashes": ["<base64>", ...]}`` (or ``"leaf": "<base64 of the leaf's bytes>"`` instead of
``leaf_hash``), an RFC 9162 inclusion proof against the checkpoint. PROOF: JSON
``{"hashes": [...]}``, an RFC 9162 consistency proof from the old checkpoint's tree to the
new one's. Exit status: 0 everything verified, 1 something did not (said on standard error),
2 a usage error.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Failed(Exception):
    """Something did not verify; the message says what."""


# -- RFC 9162 ---------------------------------------------------------------------------------


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def inclusion_root(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 2.1.3.2: the root the proof leads to (Failed if it leads nowhere)."""
    if not 0 <= index < size:
        raise Failed(f"leaf index {index} is not below the tree size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise Failed("the inclusion proof is too long")
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn // 2, sn // 2
        else:
            r = node_hash(r, p)
        fn, sn = fn // 2, sn // 2
    if sn != 0:
        raise Failed("the inclusion proof is too short")
    return r


def consistency_roots(
    old: int, new: int, old_root: bytes, proof: Sequence[bytes]
) -> tuple[bytes, bytes]:
    """RFC 9162 2.1.4.2: the old and new roots the proof leads to."""
    if not 0 < old < new:
        raise Failed(f"no consistency proof from size {old} to size {new}")
    path = list(proof)
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    if not path:
        raise Failed("the consistency proof is empty")
    fn, sn = old - 1, new - 1
    while fn % 2 == 1:
        fn, sn = fn // 2, sn // 2
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise Failed("the consistency proof is too long")
        if fn % 2 == 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn // 2, sn // 2
        else:
            sr = node_hash(sr, c)
        fn, sn = fn // 2, sn // 2
    if sn != 0:
        raise Failed("the consistency proof is too short")
    return fr, sr


# -- C2SP signed note and tlog-checkpoint ------------------------------------------------------


def parse_vkey(vkey: str) -> tuple[str, bytes, Ed25519PublicKey]:
    parts = vkey.strip().split("+", 2)  # base64 may hold "+"
    if len(parts) != 3:
        raise Failed("a verifier key is <name>+<hex key id>+<base64 key>")
    name, hex_id, encoded = parts
    try:
        key, key_id = base64.b64decode(encoded, validate=True), bytes.fromhex(hex_id)
    except (binascii.Error, ValueError):
        raise Failed("the verifier key does not decode") from None
    if len(key) != 33 or key[0] != 1 or len(key_id) != 4:
        raise Failed("not an Ed25519 verifier key")
    expected = hashlib.sha256(name.encode() + b"\n" + key).digest()[:4]
    if expected != key_id:
        raise Failed("the verifier key's id does not match its key")
    return name, key_id, Ed25519PublicKey.from_public_bytes(key[1:])


def open_checkpoint(note: bytes, vkey: str) -> tuple[str, int, bytes]:
    """(origin, size, root) of a checkpoint signed by the verifier key's owner."""
    name, key_id, public = parse_vkey(vkey)
    split = note.rfind(b"\n\n")
    if split < 0 or not note.endswith(b"\n"):
        raise Failed("not a signed note (text, a blank line, signature lines)")
    body = note[: split + 1]
    signed = False
    for raw in note[split + 2 : -1].split(b"\n"):
        line = raw.decode("utf-8", "replace")
        if not line.startswith("\u2014 ") or line.count(" ") != 2:
            raise Failed(f"not a signature line: {line!r}")
        signer, encoded = line[2:].split(" ")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise Failed("a signature does not decode") from None
        if signer != name or blob[:4] != key_id:
            continue
        try:
            public.verify(blob[4:], body)
        except InvalidSignature:
            raise Failed(
                f"the signature by {name} does not verify: the checkpoint was altered"
            ) from None
        signed = True
        break
    if not signed:
        raise Failed(f"the checkpoint carries no signature by {name}")
    lines = body.decode().rstrip("\n").split("\n")
    if len(lines) < 3 or not lines[1].isdigit():
        raise Failed("the note is not a checkpoint (origin, size, root hash)")
    try:
        root = base64.b64decode(lines[2], validate=True)
    except binascii.Error:
        raise Failed("the checkpoint's root hash does not decode") from None
    if len(root) != 32:
        raise Failed("the checkpoint's root hash is not 32 bytes")
    return lines[0], int(lines[1]), root


# -- the commands ------------------------------------------------------------------------------


def _hashes(item: dict[str, object]) -> list[bytes]:
    hashes = item.get("hashes")
    if not isinstance(hashes, list):
        raise Failed("a proof has a list of hashes")
    decoded = [base64.b64decode(str(h), validate=True) for h in hashes]
    if any(len(h) != 32 for h in decoded):
        raise Failed("a proof's hashes are 32 bytes each")
    return decoded


def verify_inclusions(vkey: str, checkpoint: bytes, proofs: str) -> int:
    origin, size, root = open_checkpoint(checkpoint, vkey)
    count = 0
    for number, line in enumerate(proofs.splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        if "leaf" in item:
            leaf = leaf_hash(base64.b64decode(item["leaf"], validate=True))
        else:
            leaf = bytes.fromhex(item["leaf_hash"])
        index = int(item["index"])
        if inclusion_root(leaf, index, size, _hashes(item)) != root:
            raise Failed(f"proof {number}: leaf {index} is not in {origin} at size {size}")
        count += 1
    return count


def verify_consistency(vkey: str, old_note: bytes, new_note: bytes, proof: str) -> tuple[int, int]:
    old_origin, old, old_root = open_checkpoint(old_note, vkey)
    new_origin, new, new_root = open_checkpoint(new_note, vkey)
    if old_origin != new_origin:
        raise Failed(f"two logs: {old_origin} and {new_origin}")
    if old > new:
        raise Failed(f"the newer checkpoint is smaller ({new} < {old}): history was cut back")
    hashes = _hashes(json.loads(proof))
    if old == new:
        if old_root != new_root or hashes:
            raise Failed(f"two trees of size {old} with different roots: a forked history")
        return old, new
    fr, sr = consistency_roots(old, new, old_root, hashes)
    if fr != old_root or sr != new_root:
        raise Failed(f"size {new} does not extend size {old}: a rewritten or forked history")
    return old, new


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audit_verify.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("checkpoint", help="check a checkpoint's signature")
    one.add_argument("--vkey", required=True)
    one.add_argument("checkpoint", type=Path)
    inclusion = commands.add_parser("inclusion", help="check inclusion proofs")
    inclusion.add_argument("--vkey", required=True)
    inclusion.add_argument("--checkpoint", required=True, type=Path)
    inclusion.add_argument("proofs", type=Path)
    consistency = commands.add_parser("consistency", help="check a consistency proof")
    consistency.add_argument("--vkey", required=True)
    consistency.add_argument("--old", required=True, type=Path)
    consistency.add_argument("--new", required=True, type=Path)
    consistency.add_argument("proof", type=Path)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    try:
        if args.command == "checkpoint":
            origin, size, root = open_checkpoint(args.checkpoint.read_bytes(), args.vkey)
            print(f"OK {origin} size {size} root {root.hex()}")
        elif args.command == "inclusion":
            text = args.proofs.read_text()
            count = verify_inclusions(args.vkey, args.checkpoint.read_bytes(), text)
            print(f"OK {count} inclusion proof(s)")
        else:
            old, new = verify_consistency(
                args.vkey, args.old.read_bytes(), args.new.read_bytes(), args.proof.read_text()
            )
            print(f"OK size {new} extends size {old}")
    except (Failed, ValueError, KeyError, OSError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
