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
