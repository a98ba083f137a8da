"""RFC 6962 Merkle trees (``aitbc.domain.merkle``): the Certificate Transparency test
vectors, and properties against the RFC's own recursive definitions."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitbc.domain.merkle import (
    EMPTY_ROOT,
    audit_path,
    leaf_hash,
    merkle_root,
    node_hash,
    root_of_leaf_hashes,
    verify_inclusion,
)

FAST = settings(max_examples=60, deadline=None)

# transparency-dev/merkle testonly (RFC 6962 test data): leaves, and the root of every
# prefix of them (size 0 is SHA-256 of nothing).
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (0-based leaf index, tree size, audit path) from transparency-dev/merkle's
# proof/verify_test.go (which numbers leaves from 1).
INCLUSION_PROOFS = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


# --- the RFC's definitions, written out naively ------------------------------------------


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(data: list[bytes]) -> bytes:
    """RFC 6962 section 2.1: MTH(D[n]), recursively."""
    n = len(data)
    if n == 0:
        return _sha(b"")
    if n == 1:
        return _sha(b"\x00" + data[0])
    k = _split(n)
    return _sha(b"\x01" + naive_mth(data[:k]) + naive_mth(data[k:]))


def naive_root_of_hashes(hashes: list[bytes]) -> bytes:
    """MTH when the leaves are given as their leaf hashes."""
    n = len(hashes)
    if n == 0:
        return _sha(b"")
    if n == 1:
        return hashes[0]
    k = _split(n)
    return _sha(b"\x01" + naive_root_of_hashes(hashes[:k]) + naive_root_of_hashes(hashes[k:]))


def naive_path(m: int, hashes: list[bytes]) -> list[bytes]:
    """RFC 6962 section 2.1.1: PATH(m, D[n]) over leaf hashes, recursively."""
    n = len(hashes)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*naive_path(m, hashes[:k]), naive_root_of_hashes(hashes[k:])]
    return [*naive_path(m - k, hashes[k:]), naive_root_of_hashes(hashes[:k])]


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


# --- vectors ------------------------------------------------------------------------------


def test_empty_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == ROOTS[0]
    assert merkle_root([]) == EMPTY_ROOT
    assert root_of_leaf_hashes([]) == EMPTY_ROOT


def test_hashes_use_the_rfc_prefixes() -> None:
    assert leaf_hash(b"abc") == _sha(b"\x00abc")
    assert node_hash(b"L" * 32, b"R" * 32) == _sha(b"\x01" + b"L" * 32 + b"R" * 32)
    assert leaf_hash(b"").hex() == ROOTS[1]


@pytest.mark.parametrize("size", range(len(ROOTS)))
def test_roots_match_the_published_vectors(size: int) -> None:
    data = LEAVES[:size]
    assert merkle_root(data).hex() == ROOTS[size]
    assert root_of_leaf_hashes([leaf_hash(d) for d in data]).hex() == ROOTS[size]
    # The naive implementation agrees, so the vectors were copied right.
    assert naive_mth(data).hex() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION_PROOFS)
def test_inclusion_proofs_match_the_published_vectors(
    index: int, size: int, path: list[str]
) -> None:
    hashes = [leaf_hash(d) for d in LEAVES[:size]]
    expected = [bytes.fromhex(h) for h in path]
    assert audit_path(hashes, index) == expected
    assert naive_path(index, hashes) == expected
    root = bytes.fromhex(ROOTS[size])
    assert verify_inclusion(hashes[index], index, size, expected, root)


def test_every_leaf_of_the_vector_tree_verifies() -> None:
    for size in range(1, len(LEAVES) + 1):
        hashes = [leaf_hash(d) for d in LEAVES[:size]]
        root = bytes.fromhex(ROOTS[size])
        for index in range(size):
            path = audit_path(hashes, index)
            assert path == naive_path(index, hashes)
            assert verify_inclusion(hashes[index], index, size, path, root)


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("index", [-1, 5, 6, True])
def test_audit_path_refuses_an_index_outside_the_tree(index: int) -> None:
    with pytest.raises(ValueError):
        audit_path(_leaves(5), index)


def test_audit_path_of_an_empty_tree_is_refused() -> None:
    with pytest.raises(ValueError):
        audit_path([], 0)


def test_verify_inclusion_refuses_impossible_proofs_without_raising() -> None:
    hashes = _leaves(5)
    root = root_of_leaf_hashes(hashes)
    path = audit_path(hashes, 3)
    assert verify_inclusion(hashes[3], 3, 5, path, root)
    assert not verify_inclusion(hashes[3], 5, 5, path, root)  # index == size
    assert not verify_inclusion(hashes[3], 9, 5, path, root)
    assert not verify_inclusion(hashes[3], -1, 5, path, root)
    assert not verify_inclusion(hashes[3], 0, 0, [], EMPTY_ROOT)
    assert not verify_inclusion(hashes[3], 3, 5, [*path, path[0]], root)  # too long
    assert not verify_inclusion(hashes[3], 3, 5, path[:-1], root)  # too short
    assert not verify_inclusion(hashes[3], 3, 5, [p[:31] for p in path], root)
    assert not verify_inclusion(hashes[3][:16], 3, 5, path, root)
    assert not verify_inclusion(hashes[3], 3, 5, path, root[:31])
    assert not verify_inclusion(hashes[3], True, 5, path, root)
    assert not verify_inclusion(hashes[3], 3, 5, ["ab" * 32], root)  # type: ignore[list-item]


def test_a_single_leaf_tree_proves_its_leaf_with_an_empty_path() -> None:
    (only,) = _leaves(1)
    assert root_of_leaf_hashes([only]) == only
    assert verify_inclusion(only, 0, 1, [], only)
    assert not verify_inclusion(only, 0, 1, [only], only)
    assert not verify_inclusion(only, 0, 2, [], only)


def test_ten_thousand_leaves_agree_with_the_recursive_definition() -> None:
    hashes = _leaves(10_000)
    assert root_of_leaf_hashes(hashes) == naive_root_of_hashes(hashes)
    root = root_of_leaf_hashes(hashes)
    for index in (0, 4095, 8191, 8192, 9998, 9999):
        path = audit_path(hashes, index)
        assert path == naive_path(index, hashes)
        assert verify_inclusion(hashes[index], index, 10_000, path, root)


# --- properties ---------------------------------------------------------------------------


@FAST
@given(st.lists(st.binary(max_size=12), max_size=70))
def test_root_equals_the_recursive_definition(data: list[bytes]) -> None:
    assert merkle_root(data) == naive_mth(data)
    assert root_of_leaf_hashes([leaf_hash(d) for d in data]) == naive_mth(data)


@FAST
@given(st.integers(min_value=1, max_value=300))
def test_every_leafs_audit_path_verifies(size: int) -> None:
    hashes = _leaves(size)
    root = root_of_leaf_hashes(hashes)
    assert root == naive_root_of_hashes(hashes)
    for index in range(size):
        path = audit_path(hashes, index)
        assert verify_inclusion(hashes[index], index, size, path, root)
    # And equal to RFC 6962's recursive PATH for a sample of leaves.
    for index in {0, size // 3, size // 2, size - 1}:
        assert audit_path(hashes, index) == naive_path(index, hashes)


@FAST
@given(st.data())
def test_a_changed_leaf_index_size_or_path_fails(data: st.DataObject) -> None:
    size = data.draw(st.integers(min_value=1, max_value=300), label="size")
    index = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
    hashes = _leaves(size)
    root = root_of_leaf_hashes(hashes)
    path = audit_path(hashes, index)
    leaf = hashes[index]
    assert verify_inclusion(leaf, index, size, path, root)

    other_leaf = leaf_hash(b"not in the tree")
    assert not verify_inclusion(other_leaf, index, size, path, root)
    flipped = bytes([leaf[0] ^ 1]) + leaf[1:]
    assert not verify_inclusion(flipped, index, size, path, root)
    if size > 1:
        other_index = data.draw(
            st.integers(min_value=0, max_value=size - 1).filter(lambda i: i != index),
            label="other_index",
        )
        assert not verify_inclusion(leaf, other_index, size, path, root)
        # The right leaf hash at another index proves nothing with this path either.
        assert not verify_inclusion(hashes[other_index], other_index, size, path, root)
    if path:
        position = data.draw(st.integers(min_value=0, max_value=len(path) - 1), label="at")
        bit = data.draw(st.integers(min_value=0, max_value=255), label="bit")
        node = bytearray(path[position])
        node[bit // 8] ^= 1 << (bit % 8)
        tampered = [*path[:position], bytes(node), *path[position + 1 :]]
        assert not verify_inclusion(leaf, index, size, tampered, root)
        assert not verify_inclusion(leaf, index, size, path[:-1], root)
    assert not verify_inclusion(leaf, index, size, [*path, root], root)
    other_root = bytes([root[0] ^ 0x80]) + root[1:]
    assert not verify_inclusion(leaf, index, size, path, other_root)


@FAST
@given(st.integers(min_value=1, max_value=200), st.integers(min_value=1, max_value=200))
def test_a_proof_for_one_tree_size_fails_for_another(size: int, other_size: int) -> None:
    """Same leaves, another size: only trees that truly agree accept the path."""
    bigger = max(size, other_size)
    hashes = _leaves(bigger)
    index = min(size, other_size) - 1
    path = audit_path(hashes[:size], index)
    other_root = root_of_leaf_hashes(hashes[:other_size])
    accepted = verify_inclusion(hashes[index], index, other_size, path, other_root)
    assert accepted == (audit_path(hashes[:other_size], index) == path)
