"""Defaults the command line shows in ``--help`` before any heavy layer (torch, pandas, scikit-learn)
is imported. Each is defined here once; the layer that uses it imports it from here."""

from __future__ import annotations

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; CXRs are at most ~4300 x 4300 (decompression-bomb guard)
DEFAULT_MIN_SIDE = 32  # shorter image side below which an image is refused (1x1 placeholders)
MAX_FILE_BYTES = 1 << 30  # 1 GiB: a 4300 x 4300 16-bit DICOM is 37 MB; larger is not one radiograph
# of 64 pHash bits; re-encoded or contrast-changed copies stay below (on the curated cxr-real set,
# whose README says its copies were removed, no pair is <= 5 apart)
DEFAULT_MAX_DISTANCE = 4
# images per prepared shard: small shards keep every worker busy to the end (measured: 128-image
# shards left one of two workers idle for a third of a 300-image run); 32 at 224 px is ~1.6 MB
DEFAULT_SHARD_SIZE = 32
# bootstrap replicates of every confidence interval over patients (evaluate, compare, studies, train --folds)
DEFAULT_N_BOOT = 1000
