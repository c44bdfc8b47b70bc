"""Near-duplicate images: a perceptual-hash candidate confirmed by a second, independent test.

Public COVID-19 collections re-publish one radiograph under several ids and collections; a
copy on each side of a split is leakage that patient ids cannot catch. Each image gets a
:class:`Signatures` entry from one decode: a digest of its decoded pixels (exact copies), its
pHash (the ``imagehash`` package) and a 16 x 16 thumbnail. Two images are near-duplicates when
their pHashes are within ``max_distance`` bits **and** their thumbnails correlate at least
``min_correlation``: the hash alone is skewed on radiographs (at 100 000 images a 4-bit radius
pairs thousands of unrelated patients, and connected components chain them into giant groups),
while re-encoded, resized or contrast-changed copies still correlate above 0.98.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cxrlab.core.defaults import DEFAULT_MAX_DISTANCE, DEFAULT_MAX_GROUP, DEFAULT_MIN_CORRELATION
from cxrlab.core.errors import InvalidImageError
from cxrlab.core.runtime import exit_with_parent
from cxrlab.data.images import read_image

log = logging.getLogger(__name__)

THUMB_SIDE = 16  # thumbnail side: 256 bytes an image, enough to tell two patients' radiographs apart (see defaults)


@dataclass(frozen=True)
class Signatures:
    """Content signatures of ``N`` images, aligned with their table's rows.

    Attributes:
        digests: ``(N,)`` str: SHA-256 (16 hex digits) of the decoded pixels; ``""`` when undecodable.
        phashes: ``(N,) uint64`` pHashes; 0 when undecodable.
        thumbs: ``(N, 256) uint8`` thumbnails (16 x 16, area-averaged).
    """

    digests: np.ndarray
    phashes: np.ndarray
    thumbs: np.ndarray

    def __len__(self) -> int:
        return len(self.phashes)

    @classmethod
    def empty(cls, n: int = 0) -> Signatures:
        return cls(np.full(n, "", dtype=object), np.zeros(n, np.uint64), np.zeros((n, THUMB_SIDE**2), np.uint8))

    @classmethod
    def concat(cls, parts: Sequence[Signatures]) -> Signatures:
        return cls(np.concatenate([p.digests for p in parts]), np.concatenate([p.phashes for p in parts]),
                   np.concatenate([p.thumbs for p in parts]))

    def take(self, rows: Sequence[int] | np.ndarray) -> Signatures:
        rows = np.asarray(rows, dtype=np.int64)
        return Signatures(self.digests[rows], self.phashes[rows], self.thumbs[rows])

    def to_record(self) -> dict:
        """JSON-ready form (kept in a model file's record of what it has seen)."""
        return {"pixels": [str(d) for d in self.digests], "phash": [f"{int(h):016x}" for h in self.phashes],
                "thumbs": base64.b64encode(np.ascontiguousarray(self.thumbs).tobytes()).decode()}

    @classmethod
    def from_record(cls, record: dict | None) -> Signatures | None:
        """The signatures of :meth:`to_record`, or ``None`` for a record without them (older model files)."""
        if not record or "phash" not in record:
            return None
        phashes = np.array([int(h, 16) for h in record["phash"]], dtype=np.uint64)
        thumbs = np.frombuffer(base64.b64decode(record["thumbs"]), np.uint8).reshape(len(phashes), THUMB_SIDE**2)
        return cls(np.array(record["pixels"], dtype=object), phashes, thumbs.copy())


def image_signature(path: str | Path) -> tuple[str, int, np.ndarray] | None:
    """``(pixel digest, pHash, thumbnail)`` of one image, or ``None`` when it cannot be decoded (logged)."""
    try:
        pixels = read_image(path, reduce_to=64).pixels
    except InvalidImageError as err:
        log.warning("%s", err)
        return None
    digest = hashlib.sha256(np.asarray(pixels.shape, np.int64).tobytes() + pixels.tobytes()).hexdigest()[:16]
    thumb = cv2.resize(pixels, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA).ravel()
    return digest, int(str(imagehash.phash(Image.fromarray(pixels))), 16), thumb


def image_phash(path: str | Path) -> int | None:
    """64-bit pHash of an image as an int, or ``None`` when the file cannot be decoded."""
    signature = image_signature(path)
    return None if signature is None else signature[1]


_CACHE: dict[tuple[str, int, int], tuple[str, int, np.ndarray]] = {}
_CACHE_LIMIT = 200_000  # ~60 MB: a run hashes its images for the split and again for its record of what it saw


def _cache_key(path: str) -> tuple[str, int, int] | None:
    try:
        stat = Path(path).stat()
    except (OSError, ValueError):  # a URL, a missing file: not cached
        return None
    return str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size


def compute_signatures(paths: Sequence[str], workers: int = 1,
                       progress: Callable[[int], None] | None = None) -> Signatures:
    """:class:`Signatures` of ``paths`` (one decode each; ~2 ms an image on one core); undecodable
    files get an empty entry and a warning.

    Args:
        paths: Image files.
        workers: Processes (1: in this process).
        progress: Called with 1 after each image.
    """
    out = Signatures.empty(len(paths))
    keys = [_cache_key(str(p)) for p in paths]
    todo = [i for i, key in enumerate(keys) if key is None or key not in _CACHE]
    for i, key in enumerate(keys):
        if key is not None and key in _CACHE:
            out.digests[i], out.phashes[i], out.thumbs[i] = _CACHE[key]
            if progress:
                progress(1)
    with contextlib.ExitStack() as stack:
        if workers <= 1 or len(todo) < 2:
            results = map(image_signature, [paths[i] for i in todo])
        else:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers, initializer=exit_with_parent))
            results = pool.map(image_signature, [paths[i] for i in todo], chunksize=16)
        for i, value in zip(todo, results):
            if value is not None:
                out.digests[i], out.phashes[i], out.thumbs[i] = value
                if keys[i] is not None and len(_CACHE) < _CACHE_LIMIT:
                    _CACHE[keys[i]] = value
            if progress:
                progress(1)
    return out


def compute_hashes(paths: Sequence[str], workers: int = 1,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """pHashes of ``paths`` as ``(N,) uint64`` (0: undecodable): :func:`compute_signatures`' ``phashes``."""
    return compute_signatures(paths, workers, progress).phashes


def _hash_pairs(query: np.ndarray, reference: np.ndarray, max_distance: int) -> tuple[np.ndarray, ...]:
    """``(query rows, reference rows, distances)`` of every pair within ``max_distance`` bits; hashes
    equal to 0 (undecodable) are ignored.

    A brute-force range search (faiss' ``IndexBinaryFlat``: popcounts of 64-bit XORs, vectorised):
    all pairs are compared, yet 100 000 hashes take about 1.5 s on 2 cores. Multi-index hashing
    (a hash table per slice of the bits) is asymptotically faster but was 15x slower here: radiograph
    hashes have skewed bits, so a few buckets hold most of the images (``bench/bench_duplicates.py``).
    """
    import faiss  # a compiled index library: imported where used

    query = np.ascontiguousarray(query, dtype=np.uint64)
    reference = np.ascontiguousarray(reference, dtype=np.uint64)
    q_keep, r_keep = np.flatnonzero(query != 0), np.flatnonzero(reference != 0)
    none = np.zeros(0, np.int64)
    if not len(q_keep) or not len(r_keep):
        return none, none, none
    index = faiss.IndexBinaryFlat(64)
    index.add(reference[r_keep].view(np.uint8).reshape(-1, 8))
    limits, distances, found = index.range_search(query[q_keep].view(np.uint8).reshape(-1, 8),
                                                  max_distance + 1)  # radius: strictly below
    rows = np.repeat(np.arange(len(q_keep)), np.diff(limits.astype(np.int64)))
    return q_keep[rows], r_keep[found.astype(np.int64)], distances.astype(np.int64)


def thumb_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of paired thumbnails (rows of ``a`` and ``b``); 0 where one is flat."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(axis=1), norm, out=np.zeros(len(a)), where=norm > 0)


def find_near_duplicates(hashes: np.ndarray, max_distance: int = DEFAULT_MAX_DISTANCE,
                         thumbs: np.ndarray | None = None,
                         min_correlation: float = DEFAULT_MIN_CORRELATION) -> list[tuple[int, int, int]]:
    """All pairs ``(i, j, distance)`` with ``i < j``, pHash distance <= ``max_distance`` and, when
    ``thumbs`` are given, thumbnails correlating at least ``min_correlation``; sorted.

    Hashes equal to 0 (undecodable) are ignored. 100 000 hashes: about 1.5 s (``bench/bench_duplicates.py``).
    """
    i, j, d = _hash_pairs(hashes, hashes, max_distance)
    near = i < j
    i, j, d = i[near], j[near], d[near]
    if thumbs is not None and len(i):
        confirmed = thumb_correlation(thumbs[i], thumbs[j]) >= min_correlation
        i, j, d = i[confirmed], j[confirmed], d[confirmed]
    order = np.lexsort((j, i))
    return [(int(a), int(b), int(c)) for a, b, c in zip(i[order], j[order], d[order])]


def near_duplicate_pairs(signatures: Signatures, max_distance: int = DEFAULT_MAX_DISTANCE,
                         min_correlation: float = DEFAULT_MIN_CORRELATION) -> list[tuple[int, int, int]]:
    """The confirmed near-duplicate pairs among ``signatures`` (:func:`find_near_duplicates`)."""
    return find_near_duplicates(signatures.phashes, max_distance, signatures.thumbs, min_correlation)


def copies_of(query: Signatures, reference: Signatures, max_distance: int = DEFAULT_MAX_DISTANCE,
              min_correlation: float = DEFAULT_MIN_CORRELATION) -> np.ndarray:
    """Per ``query`` image: ``"copy"`` (its decoded pixels equal a reference image's), ``"near copy"``
    (a confirmed near-duplicate of one) or ``""``."""
    out = np.full(len(query), "", dtype=object)
    exact = set(d for d in reference.digests if d)
    out[[bool(d) and d in exact for d in query.digests]] = "copy"
    i, j, _ = _hash_pairs(query.phashes, reference.phashes, max_distance)
    if len(i):
        confirmed = thumb_correlation(query.thumbs[i], reference.thumbs[j]) >= min_correlation
        near = np.unique(i[confirmed])
        out[near[out[near] == ""]] = "near copy"
    return out


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


def largest_group(groups: np.ndarray) -> int:
    """Images in the largest duplicate group (1 when there are no duplicates)."""
    return int(np.bincount(np.unique(groups, return_inverse=True)[1]).max()) if len(groups) else 0


def warn_if_chained(largest: int, max_group: int = DEFAULT_MAX_GROUP) -> str | None:
    """A warning when a duplicate group is larger than copies ever come (the criterion chained images)."""
    if largest <= max_group:
        return None
    message = (f"a near-duplicate group holds {largest} images (copies come in twos and threes): check it in "
               "`cxrlab audit`; a tighter --max-distance keeps unrelated images apart")
    log.warning("%s", message)
    return message


def regroup_duplicates(table: pd.DataFrame, max_distance: int = DEFAULT_MAX_DISTANCE, workers: int = 1,
                       progress: Callable[[int], None] | None = None,
                       min_correlation: float = DEFAULT_MIN_CORRELATION) -> tuple[pd.DataFrame, dict]:
    """``table`` with ``group_id``: patients linked by near-duplicate images share one group, so
    a split by ``group_id`` keeps every copy of a radiograph on one side; and what was merged.

    Returns:
        ``(table, {"max_distance", "min_correlation", "pairs", "patients_joined", "largest_group",
        "groups"})``; ``groups`` lists up to 20 of the merged groups' patient ids.
    """
    table = table.reset_index(drop=True).copy()
    signatures = compute_signatures(table["image"].tolist(), workers, progress)
    pairs = near_duplicate_pairs(signatures, max_distance, min_correlation)
    components = duplicate_groups(len(table), pairs)
    groups = pd.Series(group_patients(table["patient_id"], components), index=table.index)
    members = table.groupby(groups)["patient_id"].agg(lambda p: sorted(set(map(str, p))))
    # a patient alone keeps its id as its group, so without duplicates the split is the patient split itself
    names = {g: p[0] if len(p) == 1 else "group:" + "+".join(p) for g, p in members.items()}
    table["group_id"] = groups.map(names)
    merged = [p for p in members if len(p) > 1]
    if merged:
        log.info("near-duplicate images join %d patients into %d groups (kept on one side of every split)",
                 sum(map(len, merged)), len(merged))
    largest = largest_group(components)
    warn_if_chained(largest)
    return table, {"max_distance": max_distance, "min_correlation": min_correlation, "pairs": len(pairs),
                   "patients_joined": sum(map(len, merged)), "largest_group": largest,
                   "groups": [list(map(str, g)) for g in merged[:20]]}
