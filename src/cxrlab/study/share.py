"""A study's finished runs and results copied to a shared location (``share:``, any fsspec URL or a
folder), so the workers of a shared study need no shared file system.

Each worker keeps its own study folder (``--out``: prepared shards, checkpoints, MLflow's local
store). A run is copied to the share when it ends, its ``summary.json`` (or ``failed.json``) last,
so a run seen there with that file is whole; a worker needing a run another one trained copies it
back into its own folder. The worker that writes the report copies the study's outputs (tables,
report, ``best-model``, refit and leave-one-source-out runs) there too. What every worker can make
again itself is not copied: ``shared/`` (prepared shards, frozen-prefix store), checkpoints, locks
and the local MLflow store. Hand-written: fsspec copies files, not "a folder whose marker file comes last".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cxrlab.core.run_folder import CHECKPOINTS, FAILED, SUMMARY, TRACKING_DB
from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_text
from cxrlab.core.storage import filesystem, is_url, local

log = logging.getLogger(__name__)
MARKERS = (SUMMARY, FAILED)  # a run folder's last file: it is whole once one is there
RECORD = "share-copied.json"  # what this worker copied to the share: path -> [size, mtime_ns]
SKIP_TOP = {"shared", TRACKING_DB, "mlruns", "share.json", RECORD}  # every worker makes these itself
SKIP_ANY = {CHECKPOINTS}


def _skipped(relative: Path) -> bool:
    parts = relative.parts
    return (bool(parts) and parts[0] in SKIP_TOP) or any(p in SKIP_ANY for p in parts) or relative.suffix == ".lock"


def _files(folder: Path, base: Path) -> list[Path]:
    """Files under ``folder`` worth sharing, markers last (paths relative to ``base``); skipped
    folders (``shared/`` with its shards) are not walked."""
    kept = []
    for root, dirs, files in os.walk(folder):
        here = Path(root).relative_to(base)
        dirs[:] = sorted(d for d in dirs if not _skipped(here / d))
        kept += [here / f for f in sorted(files) if not _skipped(here / f)]
    return [p for p in kept if p.name not in MARKERS] + [p for p in kept if p.name in MARKERS]


class Share:
    """The share of one study folder ``out``.

    Methods ending in ``_quietly`` never raise: a share that cannot be reached (network, permissions,
    a missing package) costs a warning and the local copy, never a finished run; a rerun of the
    command copies what is missing.

    Args:
        url: An fsspec URL (``s3://bucket/studies/k-sweep``) or a local folder.
        out: This worker's study folder.
    """

    def __init__(self, url: str, out: Path) -> None:
        from fsspec.implementations.local import LocalFileSystem

        self.url, self.out = url, Path(out)
        self.is_local = not is_url(url)
        if self.is_local:
            self.fs, self.root = LocalFileSystem(auto_mkdir=True), str(local(url).resolve())
        else:
            self.fs, self.root = filesystem(url)

    def _remote(self, relative: Path | str) -> str:
        inner = Path(relative).as_posix()
        return self.root if inner == "." else posixpath.join(self.root, inner)

    def _fresh(self, remote: str) -> None:
        """Forget what the file system remembers of ``remote`` (s3fs answers from its listings)."""
        self.fs.invalidate_cache(remote)

    def _copied(self) -> dict[str, list[int]]:
        try:
            return json.loads((self.out / RECORD).read_text())
        except (OSError, ValueError):
            return {}

    def _record(self, copied: dict[str, list[int]]) -> None:
        atomic_write_text(self.out / RECORD, json.dumps(copied) + "\n")

    def _put_file(self, source: Path, target: str) -> None:
        """One file to the share, seen whole or not at all: an object store writes an object in one
        request; a folder gets a temporary name renamed into place."""
        if not self.is_local:
            self.fs.put_file(str(source), target)
            return
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        part = f"{target}.part-{os.getpid()}"
        shutil.copyfile(source, part)
        os.replace(part, target)

    def put(self, folder: Path) -> int:
        """Copy ``folder`` (inside ``out``) to the share, markers last, leaving out files copied (or
        fetched) before and unchanged since (size and modification time as recorded here, when the
        share still has them: one listing of the share, not a request per file); how many were copied.
        A run finished here after a failure recorded there loses that ``failed.json`` there."""
        remote = self._remote(folder.relative_to(self.out))
        self._fresh(remote)
        held = self.fs.find(remote, detail=True) if self.fs.exists(remote) else {}
        copied, count = self._copied(), 0
        for relative in _files(folder, self.out):
            target, stat = self._remote(relative), (self.out / relative).stat()
            key, now = relative.as_posix(), [stat.st_size, stat.st_mtime_ns]
            if target not in held or copied.get(key) != now:
                self._put_file(self.out / relative, target)
                copied[key] = now
                count += 1
            if relative.name == SUMMARY and (stale := posixpath.join(posixpath.dirname(target), FAILED)) in held \
                    and not (self.out / relative.parent / FAILED).exists():
                self.fs.rm_file(stale)
        if count:
            self._record(copied)
        return count

    def put_quietly(self, folder: Path, only_missing: bool = False) -> None:
        """:meth:`put` (``only_missing``: only when the run is not whole on the share), never raising."""
        try:
            if not (only_missing and self.has(folder)):
                self.put(folder)
        except Exception as err:  # noqa: BLE001 -- botocore's and other file systems' errors are not OSErrors
            log.warning("study: %s could not be copied to %s: %s: %s", folder, self.url, type(err).__name__, err)

    def has(self, folder: Path) -> bool:
        """Whether the run ``folder`` (inside ``out``) is whole on the share."""
        remote = self._remote(folder.relative_to(self.out))
        self._fresh(remote)
        return any(self.fs.exists(posixpath.join(remote, m)) for m in MARKERS)

    def get(self, folder: Path, run: bool = True) -> bool:
        """Copy ``folder`` (inside ``out``) from the share, replacing what this worker has of it: a run
        folder only when it is whole there (a marker file; ``run=False``: any folder that is there);
        whether it was copied. What is copied is recorded, so it is not copied back."""
        relative = folder.relative_to(self.out)
        remote = self._remote(relative)
        self._fresh(remote)
        if not (self.has(folder) if run else self.fs.isdir(remote)):
            return False
        part = folder.with_name(f"{folder.name}.part-{os.getpid()}")
        shutil.rmtree(part, ignore_errors=True)
        names = sorted(self.fs.find(remote))
        fetched = []
        for name in sorted(names, key=lambda n: posixpath.basename(n) in MARKERS):  # markers last
            inner = Path(posixpath.relpath(name, remote))
            if not _skipped(relative / inner) and ".part-" not in inner.name:
                (part / inner).parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(name, str(part / inner))
                fetched.append(relative / inner)
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        part.rename(folder)
        copied = self._copied()
        for path in fetched:
            stat = (self.out / path).stat()
            copied[path.as_posix()] = [stat.st_size, stat.st_mtime_ns]
        self._record(copied)
        return True

    def get_quietly(self, folder: Path, run: bool = True) -> bool:
        """:meth:`get`, never raising: False when the share cannot be read."""
        try:
            return self.get(folder, run)
        except Exception as err:  # noqa: BLE001 -- as in put_quietly
            log.warning("study: %s could not be read from %s: %s: %s", folder, self.url, type(err).__name__, err)
            return False

    def get_file(self, name: str) -> bool:
        """Copy one file of the study folder's top level from the share; whether it was there."""
        remote = self._remote(name)
        self._fresh(remote)
        if not self.fs.exists(remote):
            return False
        target = self.out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        part = Path(f"{target}.part-{os.getpid()}")
        self.fs.get_file(remote, str(part))
        part.replace(target)
        return True

    def claim(self, config: dict, fixed: Sequence[str], split: str) -> None:
        """Check the share holds this study (or nothing yet) and record its settings there. As in a
        study folder, only the settings that fix the split are fixed (a grid may grow).

        Args:
            config: The study's settings.
            fixed: The settings a share's study must keep.
            split: A digest of this worker's split (:func:`split_digest`): every worker must make the same.

        Raises:
            ConfigError: the share holds a study made with other values of the ``fixed`` settings, or
                with another split (other data here).
        """
        remote = self._remote("share.json")
        mine = {"config": {k: config.get(k) for k in fixed}, "split": split}
        self._fresh(remote)
        if not self.fs.exists(remote):
            try:  # only one of two workers starting together writes it; the other checks against it
                self._create(remote, (json.dumps(mine, indent=2) + "\n").encode())
                return
            except FileExistsError:
                self._fresh(remote)
        held = json.loads(self.fs.cat_file(remote))
        changed = [k for k in fixed if held["config"].get(k) != mine["config"][k]]
        if changed:
            raise ConfigError(f"{self.url}: holds a study with other settings (differs in {', '.join(changed)}); "
                              "use a new share")
        if held["split"] != split:
            raise ConfigError(f"{self.url}: holds a study whose split differs from this worker's (other data or "
                              "files here?); every worker needs the same data")

    def _create(self, remote: str, data: bytes) -> None:
        """Write ``remote`` only if it does not exist (FileExistsError otherwise)."""
        if self.is_local:
            Path(remote).parent.mkdir(parents=True, exist_ok=True)
            with open(remote, "xb") as handle:
                handle.write(data)
            return
        try:
            self.fs.pipe_file(remote, data, mode="create")
        except TypeError:  # a file system without exclusive creation: a near race stays possible
            self.fs.pipe_file(remote, data)


def split_digest(frame: pd.DataFrame) -> str:
    """A fingerprint of a study's split that does not depend on where the data are mounted: each
    image's patient, side and fold, in the split's order."""
    columns = [c for c in ("patient_id", "label", "split", "fold") if c in frame.columns]
    return hashlib.sha256(frame[columns].to_csv(index=False).encode()).hexdigest()[:16]
