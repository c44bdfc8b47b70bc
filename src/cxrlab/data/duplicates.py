"""Near-duplicate images by perceptual hash (the ``imagehash`` package's pHash).

Public COVID-19 collections re-publish one radiograph under several ids and collections; a
copy on each side of a split is leakage that patient ids cannot catch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cxrlab.core.defaults import DEFAULT_MAX_DISTANCE
from cxrlab.core.errors import InvalidImageError
from cxrlab.core.runtime import exit_with_parent
from cxrlab.data.images import read_image

log = logging.getLogger(__name__)


def image_phash(path: str | Path) -> int | None:
    """64-bit pHash of an image as an int, or ``None`` when the file cannot be decoded."""
    try:
        decoded = read_image(path, reduce_to=64)
    except InvalidImageError as err:
        log.warning("%s", err)
        return None
    return int(str(imagehash.phash(Image.fromarray(decoded.pixels))), 16)


def compute_hashes(paths: Sequence[str], workers: int = 1,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """pHashes of ``paths`` as ``(N,) uint64``; undecodable files get hash 0 and a warning.

    Args:
        paths: Image files.
        workers: Processes (1: in this process).
        progress: Called with 1 after each image.
    """
    out = np.zeros(len(paths), dtype=np.uint64)
    with contextlib.ExitStack() as stack:
        if workers <= 1:
            results = map(image_phash, paths)
        else:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers, initializer=exit_with_parent))
            results = pool.map(image_phash, paths, chunksize=16)
        for i, value in enumerate(results):
            out[i] = value or 0
            if progress:
                progress(1)
    return out


def find_near_duplicates(hashes: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE) -> list[tuple[int, int, int]]:
    """All pairs ``(i, j, distance)`` with ``i < j`` and Hamming distance <= ``max_distance``, sorted.

    Hashes equal to 0 (undecodable) are ignored. Multi-index hashing (faiss'
    ``IndexBinaryMultiHash``): the 64 bits are cut into ``max_distance + 1`` slices, one hash table
    each; two hashes within ``max_distance`` bits of each other agree exactly on at least one slice
    (pigeonhole), so a range search over the tables' candidates finds every pair, in about linear
    time instead of comparing all ``N²/2`` pairs (100 000 hashes: well under a second).
    """
    import faiss  # a compiled index library: imported where used

    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    keep = np.flatnonzero(hashes != 0)
    if len(keep) < 2:
        return []
    codes = hashes[keep].view(np.uint8).reshape(-1, 8)
    tables = max_distance + 1
    index = faiss.IndexBinaryMultiHash(64, tables, 64 // tables) if tables <= 64 else faiss.IndexBinaryFlat(64)
    index.add(codes)
    limits, distances, found = index.range_search(codes, max_distance + 1)  # radius: strictly below
    rows = np.repeat(np.arange(len(keep)), np.diff(limits.astype(np.int64)))
    near = rows < found
    i, j = keep[rows[near]], keep[found[near]]
    order = np.lexsort((j, i))
    return [(int(a), int(b), int(d)) for a, b, d in zip(i[order], j[order], distances[near][order].astype(int))]


def duplicate_groups(n: int, pairs: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Connected-component label per image, joining every near-duplicate pair."""
    if not pairs:
        return np.arange(n)
    i, j, _ = zip(*pairs)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def group_patients(patient_ids: Sequence[str], groups: np.ndarray) -> list[str]:
    """Join patients whose images share a duplicate group; returns a ``group_id`` per image.

    Splitting by this id instead of ``patient_id`` keeps every copy of a radiograph, and all
    images of every patient involved, on one side.
    """
    codes = np.unique(np.asarray(patient_ids).astype(str), return_inverse=True)[1]
    n_patients = int(codes.max()) + 1 if len(codes) else 0
    incidence = coo_matrix((np.ones(len(codes)), (codes, groups)), shape=(n_patients, len(codes))).tocsr()
    joined = connected_components(incidence @ incidence.T, directed=False)[1]
    return [f"group:{joined[c]}" for c in codes]


def regroup_duplicates(table: pd.DataFrame, max_distance: int = DEFAULT_MAX_DISTANCE, workers: int = 1,
                       progress: Callable[[int], None] | None = None) -> tuple[pd.DataFrame, dict]:
    """``table`` with ``group_id``: patients linked by near-duplicate images (pHash) share one group, so
    a split by ``group_id`` keeps every copy of a radiograph on one side; and what was merged.

    Returns:
        ``(table, {"max_distance", "pairs", "patients_joined", "groups"})``; ``groups`` lists up to 20
        of the merged groups' patient ids.
    """
    table = table.reset_index(drop=True).copy()
    pairs = find_near_duplicates(compute_hashes(table["image"].tolist(), workers, progress), max_distance)
    groups = pd.Series(group_patients(table["patient_id"], duplicate_groups(len(table), pairs)), index=table.index)
    members = table.groupby(groups)["patient_id"].agg(lambda p: sorted(set(map(str, p))))
    # a patient alone keeps its id as its group, so without duplicates the split is the patient split itself
    names = {g: p[0] if len(p) == 1 else "group:" + "+".join(p) for g, p in members.items()}
    table["group_id"] = groups.map(names)
    merged = [p for p in members if len(p) > 1]
    if merged:
        log.info("near-duplicate images join %d patients into %d groups (kept on one side of every split)",
                 sum(map(len, merged)), len(merged))
    return table, {"max_distance": max_distance, "pairs": len(pairs), "patients_joined": sum(map(len, merged)),
                   "groups": [list(map(str, g)) for g in merged[:20]]}
