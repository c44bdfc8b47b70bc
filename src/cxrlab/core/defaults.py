"""Defaults the command line shows in ``--help`` before any heavy layer (torch, pandas, scikit-learn)
is imported. Each is defined here once; the layer that uses it imports it from here."""

from __future__ import annotations

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; CXRs are at most ~4300 x 4300 (decompression-bomb guard)
DEFAULT_MIN_SIDE = 32  # shorter image side below which an image is refused (1x1 placeholders)
MAX_FILE_BYTES = 1 << 30  # 1 GiB: a 4300 x 4300 16-bit DICOM is 37 MB; larger is not one radiograph
# near-duplicates: a pHash candidate (Hamming distance of 64 bits) confirmed by the correlation of
# 16 x 16 thumbnails. On the 527 cxr-real radiographs (bench/bench_duplicates.py): re-encoded, halved,
# brightened or gamma-changed copies stay within 6 bits and correlate >= 0.985, while of 138 k pairs of
# different patients 6 are within 6 bits and none of those correlates above 0.93 (the most similar
# pair of different patients anywhere: 0.957).
DEFAULT_MAX_DISTANCE = 6
DEFAULT_MIN_CORRELATION = 0.98
# a duplicate group larger than this is reported as suspect (copies come in twos and threes; a giant
# group means the criterion chained unrelated images)
DEFAULT_MAX_GROUP = 20
# images per prepared shard: small shards keep every worker busy to the end (measured: 128-image
# shards left one of two workers idle for a third of a 300-image run); 32 at 224 px is ~1.6 MB
DEFAULT_SHARD_SIZE = 32
# bootstrap replicates of every confidence interval over patients (evaluate, compare, studies, train --folds)
DEFAULT_N_BOOT = 1000
