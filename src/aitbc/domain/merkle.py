"""RFC 6962 Merkle trees: tree hashes, audit paths and inclusion checks (DESIGN.md section 3).

The ledger's ``tx_root`` and ``state_root`` are RFC 6962 Merkle Tree Hashes (MTH), and
an inclusion proof is checked with the algorithm of RFC 9162 section 2.1.3.2, so an
outside verifier can use any Certificate Transparency library. Leaves and nodes are
hashed with SHA-256 behind a one-byte prefix (``0x00`` for a leaf, ``0x01`` for two
children), which keeps a leaf from ever passing for an interior node.

RFC 6962 defines MTH recursively, splitting ``n`` leaves at the largest power of two
below ``n``. Hashing level by level instead (pair neighbours, carry a lone last node up
unchanged) gives the same root and the same audit paths, without recursion: this is
on the hot path of a chain verifier. ``tests/unit/test_merkle.py`` checks both against
the RFC's recursive definition and the published test vectors.

Pure: no I/O. Functions take leaf hashes (``leaf_hash`` of the data) where they say so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_BYTES = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
# MTH({}) = SHA-256 of the empty string.
EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """MTH of a one-leaf tree: SHA-256(0x00 || data)."""
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """An interior node: SHA-256(0x01 || left || right)."""
    return _sha256(NODE_PREFIX + left + right).digest()


def _parent_level(level: list[bytes]) -> list[bytes]:
    """The level above: neighbours hashed in pairs, a lone last node carried up."""
    sha256 = _sha256
    pairs = iter(level)
    # zip over one iterator twice pairs (0, 1), (2, 3), ... without copying the list.
    parents = [
        sha256(b"\x01" + left + right).digest() for left, right in zip(pairs, pairs, strict=False)
    ]
    if len(level) & 1:
        parents.append(level[-1])
    return parents


def root_of_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH of a tree whose leaves are already hashed (``leaf_hash`` of each datum).

    An empty tree's root is :data:`EMPTY_ROOT`; a one-leaf tree's root is its leaf hash.
    """
    size = len(hashes)
    if size == 0:
        return EMPTY_ROOT
    if size == 1:
        return hashes[0]
    level = _parent_level(list(hashes))
    while len(level) > 1:
        level = _parent_level(level)
    return level[0]


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """MTH of the raw leaf data ``leaves`` (each hashed with :func:`leaf_hash`)."""
    sha256 = _sha256
    return root_of_leaf_hashes([sha256(b"\x00" + data).digest() for data in leaves])


def audit_path(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 section 2.1.1 PATH(index, D[n]) over already-hashed leaves: the sibling
    hashes from the leaf up to the root, nearest first. ``ValueError`` when ``index`` is
    not a leaf of the tree (negative, or ``>= len(hashes)``)."""
    size = len(hashes)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
        raise ValueError(f"leaf index {index!r} is not in a tree of {size} leaves")
    path: list[bytes] = []
    level = list(hashes)
    position = index
    while len(level) > 1:
        sibling = position ^ 1
        # A node without a right neighbour is carried up: that level adds nothing.
        if sibling < len(level):
            path.append(level[sibling])
        level = _parent_level(level)
        position >>= 1
    return path


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``path`` proves that the leaf hash ``leaf`` is leaf ``index`` of the tree
    of ``tree_size`` leaves whose MTH is ``root``: RFC 9162 section 2.1.3.2, step for step.

    False, never an exception, for anything that is not a valid proof: an index out of
    range, a path of the wrong length, hashes that are not 32 bytes.
    """
    if isinstance(index, bool) or isinstance(tree_size, bool):
        return False
    if not isinstance(index, int) or not isinstance(tree_size, int):
        return False
    # 1. If leaf_index is greater than or equal to tree_size, then fail the proof
    #    verification. (A negative index is not a leaf index either.)
    if index < 0 or index >= tree_size:
        return False
    if not _is_hash(leaf) or not _is_hash(root):
        return False
    sha256 = _sha256
    # 2. Set fn to leaf_index and sn to tree_size - 1.
    fn = index
    sn = tree_size - 1
    # 3. Set r to hash.
    r = bytes(leaf)
    # 4. For each value p in the inclusion_path array:
    for p in path:
        if not _is_hash(p):
            return False
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            return False
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            # i. Set r to HASH(0x01 || p || r).
            r = sha256(b"\x01" + p + r).digest()
            # ii. If LSB(fn) is not set, then right-shift both fn and sn equally until
            #     either LSB(fn) is set or fn is 0.
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        # Otherwise: set r to HASH(0x01 || r || p).
        else:
            r = sha256(b"\x01" + r + p).digest()
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. Compare sn to 0. Compare r against the root_hash. If sn is equal to 0 and r
    #    and the root_hash are equal, then the log has proven the inclusion of hash.
    return sn == 0 and r == root


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes | bytearray) and len(value) == HASH_BYTES
