"""Near-duplicate search: the hash index finds exactly the pairs an all-pairs comparison finds."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlab.data.duplicates import find_near_duplicates


def _all_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    i, j = np.nonzero(np.triu(distance <= max_distance, k=1))
    return [(int(a), int(b), int(distance[a, b])) for a, b in zip(i, j) if hashes[a] and hashes[b]]


@pytest.mark.parametrize("max_distance", [0, 1, 4, 8])
def test_the_index_finds_every_pair_within_the_distance_and_no_other(max_distance):
    rng = np.random.default_rng(max_distance)
    base = rng.integers(1, 2**63, 300, dtype=np.uint64)
    copies = []  # each base hash again with 0..10 random bits flipped: pairs near and beyond the distance
    for value in base[:200]:
        for flips in rng.integers(0, 11, 3):
            bits = rng.choice(64, size=flips, replace=False)
            copies.append(value ^ np.bitwise_or.reduce(np.left_shift(np.uint64(1), bits.astype(np.uint64)),
                                                       initial=np.uint64(0)))
    hashes = np.concatenate([base, np.array(copies, dtype=np.uint64), np.zeros(3, np.uint64)])  # 0: undecodable
    rng.shuffle(hashes)
    expected = _all_pairs(hashes, max_distance)
    assert len(expected) > 20  # the fixture holds pairs at this distance
    assert find_near_duplicates(hashes, max_distance) == expected


def test_no_pairs_from_fewer_than_two_usable_hashes():
    assert find_near_duplicates(np.array([0, 0, 5], dtype=np.uint64)) == []
    assert find_near_duplicates(np.array([], dtype=np.uint64)) == []


def test_a_hash_candidate_counts_only_when_the_thumbnails_agree():
    """Unrelated images whose hashes happen to be close (common on radiographs) are not joined."""
    from cxrlab.data.duplicates import Signatures, copies_of, near_duplicate_pairs

    rng = np.random.default_rng(0)
    thumbs = rng.integers(0, 255, (4, 256)).astype(np.uint8)
    thumbs[1] = np.clip(thumbs[0].astype(int) + 10, 0, 255)  # 1: a brightened copy of 0
    hashes = np.array([0b1111, 0b1110, 0b1101, 2**40], dtype=np.uint64)  # 2: close hash, unrelated thumbnail
    signatures = Signatures(np.array(["a", "b", "c", "d"], dtype=object), hashes, thumbs)
    assert near_duplicate_pairs(signatures, max_distance=2) == [(0, 1, 1)]
    assert [p[:2] for p in find_near_duplicates(hashes, 2)] == [(0, 1), (0, 2), (1, 2)]  # the hash alone
    query = Signatures(np.array(["d", "x", "y"], dtype=object), hashes[[3, 1, 2]], thumbs[[3, 1, 2]])
    reference = signatures.take([0, 3])
    assert copies_of(query, reference, max_distance=2).tolist() == ["copy", "near copy", ""]
    again = Signatures.from_record(signatures.to_record())
    assert (again.phashes == hashes).all() and (again.thumbs == thumbs).all() and list(again.digests) == list("abcd")
