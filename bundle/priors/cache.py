"""Prior cache: SAM priors are computed once per case and configuration, and reused by every epoch, run and workflow.

A cache folder holds one *partition* per configuration, so priors of several SAM models (LiteMedSAM, ViT-B, the
fallback) and of several generator settings live side by side without overwriting each other::

    <cache_dir>/<partition>/partition.json                  the configuration: full signature, its sha256, when made
    <cache_dir>/<partition>/manifest.json                   index of the partition's (verified) cases
    <cache_dir>/<partition>/<case_id>/<kind>.<hex12>.nii.gz one NIfTI per prior kind, in the oriented image's grid,
                                                            named after the first 12 hex digits of its own sha256
    <cache_dir>/<partition>/<case_id>/<name>.<hex12>.npy    extra arrays (WeakMedSAM's pooled embeddings, ...)
    <cache_dir>/<partition>/<case_id>/entry.json            the case's entry, written last

The partition is named after the model (or generator) and the first 12 hex digits of the sha256 of the signature:
the prior transform's signature (generator with SAM model type, checkpoint sha256, preprocessing and every
generator setting; slice window; prior kinds) plus the bundle version. The signature is computed without building
SAM (:class:`bundle.sam.engine.SamEngine` loads its model on first use), so a run whose priors are all cached never
builds SAM. ``sam-priors-cache list|prune`` (:mod:`bundle.priors.cache_cli`) shows and removes partitions.

**Verified entries.** An entry (``"format": 2``) records the input files (size, mtime, sha256) and, for every file
it lists, its size and sha256 (``checksums``). A case is current when its entry matches the partition's signature
and its input files *and* every file it lists has the recorded size and sha256; anything else is recomputed, or,
where the cache cannot be written, refused with one error naming the file at fault and saying the cache is
read-only. An entry of an older bundle (no checksums) cannot be verified and counts as bad. Hashing costs about
what reading the file does, so each file is hashed once per process: the result is remembered by path, size,
mtime and inode (a file cut short or rewritten changes its size or mtime and is hashed again); the size is checked
on every read.

**Atomic replacement.** Every file is written under a temporary name and renamed; a file's name carries its
content digest, so a rewrite of a case writes its new files *beside* the old ones, then replaces ``entry.json``
(one rename), then removes the files that neither the new entry nor the one it replaced (its ``previous_files``)
lists. A reader therefore
finds the old entry with its files or the new one with its files, never a missing entry; a reader that read an
entry two rewrites ago and finds a file gone reads the entry again. The write step of a case (files, entry,
clean-up) runs under ``<partition>/.store.lock`` (``fcntl.flock``), so two writers never remove each other's new
files. A run killed at any point leaves either the previous entry or the new one, plus at most unlisted files and
temporary files: :meth:`PriorCache.tidy` removes both (precompute and the WeakMedSAM stages call it; the training
transform's first write removes the temporary files), as does the case's next write.

Several writers may share one cache folder at once (two precompute jobs, the ranks of a ``torchrun`` job, training
runs filling misses). The manifest is never merged from its previous text: every writer rebuilds it from the
entries on disk. A rebuild alone could still lose a case (writer A lists the entries, B adds one and writes its
manifest, A then writes its older list over it), so the list-and-write step runs under an exclusive ``fcntl.flock``
on ``<partition>/.manifest.lock``. Each writer writes its manifest after its own entries, so the last one to take
the lock lists every finished entry. The lock is taken only when the manifest must change (an up-to-date cache on a
read-only disk needs no write at all); where ``fcntl`` does not exist (Windows) the rebuilds and writes run
unlocked, which is safe for one writer at a time.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Hashable, Iterator, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import optional_import

import bundle
from bundle.atomic import atomic_content_path, remove_stale_temps, write_text_atomic
from bundle.data.case_ids import case_id_of, source_files_of
from bundle.errors import InputError
from bundle.folders import OutputFolderError, check_writable_folder
from bundle.hashing import canonical_json, json_sha256, path_sha256
from bundle.priors.cache_files import CaseStatus, read_verified, remember, verify_file
from bundle.priors.transforms import SamPrior

__all__ = ["PriorCache", "CachedSamPriord", "CaseStatus", "file_fingerprint", "partition_name", "verify_file",
           "PARTITION_NAME", "MANIFEST_NAME", "ENTRY_NAME", "ENTRY_FORMAT", "MANIFEST_LOCK_NAME", "STORE_LOCK_NAME"]

fcntl, has_fcntl = optional_import("fcntl")  # POSIX only
logger = logging.getLogger(__name__)

ENTRY_NAME = "entry.json"
ENTRY_FORMAT = 2
"""Entries that record the size and sha256 of their files (older ones are not trusted)."""
MANIFEST_NAME = "manifest.json"
MANIFEST_LOCK_NAME = ".manifest.lock"
STORE_LOCK_NAME = ".store.lock"
PARTITION_NAME = "partition.json"
# binary priors are stored as uint8 (8x smaller than float32 before compression); the others as float32
_UINT8_KINDS = {"sam_boundary_prior"}
_ENTRY_KEYS = {"case_id", "signature_sha256", "inputs", "kinds", "files"}
_READ_ATTEMPTS = 8  # a reader racing several rewrites of one case reads its entry again this many times at most

def file_fingerprint(path: str | os.PathLike, previous: Mapping | None = None) -> dict:
    """``{path, size, mtime_ns, sha256}`` of an input file or series folder.

    When ``previous`` describes the same path with the same size and mtime, its sha256 is reused instead of reading
    the file again (hashing a 500 MB CT on every epoch would cost more than loading it).
    """
    p = Path(path)
    stat = p.stat()
    if p.is_file():
        size, mtime = stat.st_size, stat.st_mtime_ns
    else:
        # a file rewritten in place changes its own mtime, not the folder's: take the newest of all
        stats = [f.stat() for f in p.rglob("*") if f.is_file()]
        size = sum(s.st_size for s in stats)
        mtime = max([stat.st_mtime_ns, *(s.st_mtime_ns for s in stats)])
    fp = {"path": str(p.resolve()), "size": int(size), "mtime_ns": int(mtime)}
    if previous and all(previous.get(k) == fp[k] for k in ("path", "size", "mtime_ns")) and previous.get("sha256"):
        fp["sha256"] = previous["sha256"]
    else:
        fp["sha256"] = path_sha256(p)
    return fp


def partition_name(signature: Mapping, digest: str) -> str:
    """``<model or generator>-<12 hex digits>``: readable in a file browser, unique per configuration."""
    generator = signature.get("prior", {}).get("generator", {})
    label = generator.get("sam", {}).get("model_type") or generator.get("generator") or "priors"
    return f"{label}-{digest[:12]}"


class PriorCache:
    """Read and write cached prior volumes for one prior configuration (one partition of a cache folder).

    Args:
        cache_dir: the cache folder (shared by all configurations).
        signature: the prior transform's signature (:meth:`SamPrior.signature`); it names the partition.
        label: the readable part of the partition's name (default: the SAM model or generator of the signature).
        what: how errors call the cache (``"prior cache"``, ``"WeakMedSAM feature cache"``).

    Raises:
        TypeError: the signature holds a value that is not plain JSON (see :func:`bundle.hashing.canonical_json`).
    """

    def __init__(self, cache_dir: str | os.PathLike, signature: Mapping, label: str | None = None,
                 what: str = "prior cache") -> None:
        self.root = Path(cache_dir)
        self.signature = {"bundle_version": bundle.__version__, "prior": dict(signature)}
        self.digest = json_sha256(self.signature)
        name = partition_name(self.signature, self.digest) if label is None else f"{label}-{self.digest[:12]}"
        self.cache_dir = self.root / name
        self.kinds = list(signature.get("kinds", []))
        self.what = what

    def case_dir(self, case_id: str) -> Path:
        return self.cache_dir / case_id

    # ---- reading -------------------------------------------------------------------------------------------------
    def _entry_and_text(self, case_id: str) -> tuple[dict | None, bytes | None]:
        """``(entry or None, raw bytes or None)``; an unreadable entry gives ``(None, bytes)``."""
        text = self._entry_text(case_id)
        if text is None:
            return None, None
        try:
            entry = json.loads(text)
        except ValueError:  # JSONDecodeError, or UnicodeDecodeError of a binary file
            return None, text
        return (entry, text) if isinstance(entry, dict) and _ENTRY_KEYS <= entry.keys() else (None, text)

    def read_entry(self, case_id: str) -> dict | None:
        entry, text = self._entry_and_text(case_id)
        if entry is None and text is not None:
            logger.warning("%s: unreadable cache entry, the case will be recomputed",
                           self.case_dir(case_id) / ENTRY_NAME)
        return entry

    def _entry_text(self, case_id: str) -> bytes | None:
        try:
            return (self.case_dir(case_id) / ENTRY_NAME).read_bytes()
        except FileNotFoundError:
            return None

    def _stable(self, case_id: str, read: Callable[[dict | None], object]) -> object:
        """``read(entry)`` on the case's current entry; when a file it lists is gone because a writer replaced the
        entry meanwhile (old files are removed two rewrites later), the new entry is read instead."""
        for attempt in range(_READ_ATTEMPTS):
            entry, text = self._entry_and_text(case_id)
            try:
                return read(entry)
            except FileNotFoundError:
                if attempt + 1 == _READ_ATTEMPTS or self._entry_text(case_id) == text:
                    raise
        raise AssertionError("unreachable")

    def entry_problem(self, case_id: str, entry: Mapping) -> tuple[Path, str] | None:
        """The first file of ``entry`` that is not what the entry recorded, as ``(path, problem)``; ``None`` when
        every file has its recorded size and sha256.

        Raises:
            FileNotFoundError: a listed file is missing (callers read the entry again, see :meth:`_stable`).
        """
        case_dir = self.case_dir(case_id)
        checksums = entry.get("checksums")
        if entry.get("format") != ENTRY_FORMAT or not isinstance(checksums, Mapping):
            return (case_dir / ENTRY_NAME, "was written by an older version of the bundle without the size and "
                                           "sha256 of its files, so they cannot be verified")
        for key, name in entry["files"].items():
            record = checksums.get(key)
            if not isinstance(record, Mapping) or not isinstance(record.get("size"), int) \
                    or not isinstance(record.get("sha256"), str) or not isinstance(name, str) or "/" in name:
                return case_dir / ENTRY_NAME, f"records no valid size and sha256 for {key!r}"
            problem = verify_file(case_dir / name, record["size"], record["sha256"])
            if problem:
                return case_dir / name, problem
        return None

    def status(self, case_id: str, sources: Sequence[str]) -> CaseStatus:
        """What the cache holds for ``case_id`` made from ``sources`` (see :class:`CaseStatus`); verifies the files."""
        def read(entry: dict | None) -> CaseStatus:
            entry_path = self.case_dir(case_id) / ENTRY_NAME
            if entry is None:
                if entry_path.exists():
                    return CaseStatus("bad", entry_path, "is not a readable cache entry")
                return CaseStatus("missing", self.case_dir(case_id), "has no cache entry")
            if entry.get("signature_sha256") != self.digest:
                return CaseStatus("stale", entry_path, "was made with another configuration")
            inputs = [fp for fp in entry.get("inputs", []) if isinstance(fp, Mapping)]
            previous = {fp.get("path"): fp for fp in inputs}
            stored = [(fp.get("path"), fp.get("sha256")) for fp in inputs]
            try:
                now = [file_fingerprint(s, previous.get(str(Path(s).resolve()))) for s in sources]
            except FileNotFoundError as err:
                return CaseStatus("stale", entry_path, f"input file {err.filename} is missing")
            if stored != [(fp["path"], fp["sha256"]) for fp in now]:
                return CaseStatus("stale", entry_path, "was made from other input files")
            bad = self.entry_problem(case_id, entry)
            return CaseStatus("current") if bad is None else CaseStatus("bad", *bad)

        try:
            return self._stable(case_id, read)
        except FileNotFoundError as err:
            return CaseStatus("bad", Path(err.filename or self.case_dir(case_id)), "is missing")

    def is_current(self, case_id: str, sources: Sequence[str]) -> bool:
        """True when the cached priors of ``case_id`` were made from these files with this configuration, and every
        cached file is what its entry recorded."""
        return self.status(case_id, sources).current

    def fingerprints(self, case_id: str, sources: Sequence[str]) -> list[dict]:
        entry = self.read_entry(case_id) or {}
        previous = {fp["path"]: fp for fp in entry.get("inputs", [])}
        return [file_fingerprint(s, previous.get(str(Path(s).resolve()))) for s in sources]

    def _verified_file(self, case_id: str, entry: dict | None, key: str) -> Path:
        """The path of ``entry``'s file ``key`` once it is verified; raises :class:`InputError` naming what is bad."""
        if entry is None or key not in entry.get("files", {}):
            raise FileNotFoundError(f"no cached {key!r} for case {case_id} in {self.cache_dir}")
        bad = self.entry_problem(case_id, {**entry, "files": {key: entry["files"][key]}})
        if bad is not None:
            raise InputError(*bad)
        return self.case_dir(case_id) / entry["files"][key]

    def _verified_bytes(self, case_id: str, entry: dict | None, key: str) -> tuple[Path, bytes]:
        """``(path, bytes)`` of ``entry``'s file ``key``, read once and verified from what was read: a rewrite that
        removes the file after it was opened cannot change what is used (the check and the use are one read)."""
        path = self._verified_file(case_id, entry, key)  # the entry's records are sound (cheap once memoised)
        record = entry["checksums"][key]
        data, problem = read_verified(path, record["size"], record["sha256"])
        if problem:
            raise InputError(path, problem)
        return path, data

    def file(self, case_id: str, key: str) -> Path:
        """The verified path of a case's cached file ``key`` (a prior kind or an array name).

        Raises:
            InputError: naming the file (or the entry) that is not what the entry recorded.
            FileNotFoundError: the case has no entry, or its entry no such file.
        """
        return self._stable(case_id, lambda entry: self._verified_file(case_id, entry, key))

    def load(self, case_id: str) -> MetaTensor:
        """The cached ``[K, H, W, D]`` priors of a case (channel names in ``meta["channel_names"]``), verified.

        Raises:
            InputError: naming a cached file that is not what its entry recorded, or cannot be read.
            FileNotFoundError: the case has no entry.
        """
        def read(entry: dict | None) -> MetaTensor:
            if entry is None:
                raise FileNotFoundError(f"no cached priors for case {case_id} in {self.cache_dir}")
            arrays, affine = [], None
            for kind in entry["kinds"]:
                path, data = self._verified_bytes(case_id, entry, kind)
                try:
                    stream = io.BytesIO(data)  # the verified bytes themselves, not the path again
                    img = nib.Nifti1Image.from_stream(
                        gzip.GzipFile(fileobj=stream) if path.name.endswith(".gz") else stream)
                    arrays.append(np.asarray(img.dataobj, dtype=np.float32))
                except Exception as err:  # gzip and nibabel raise several types for damaged files
                    raise InputError(path, f"cached file cannot be read ({type(err).__name__}: {err})") from err
                affine = img.affine
            meta = {"channel_names": list(entry["kinds"]), "filename_or_obj": str(self.case_dir(case_id))}
            return MetaTensor(torch.from_numpy(np.stack(arrays)), affine=torch.as_tensor(affine), meta=meta)

        return self._stable(case_id, read)

    def load_array(self, case_id: str, name: str) -> np.ndarray:
        """An extra array stored with a case's priors (``store(..., arrays={name: ...})``), verified."""
        def read(entry: dict | None) -> np.ndarray:
            path, data = self._verified_bytes(case_id, entry, name)
            try:
                return np.load(io.BytesIO(data), allow_pickle=False)
            except (OSError, ValueError) as err:
                raise InputError(path, f"cached array cannot be read ({type(err).__name__}: {err})") from err

        return self._stable(case_id, read)

    # ---- writing -------------------------------------------------------------------------------------------------
    def refuse_read_only(self, path: str | os.PathLike, problem: str) -> None:
        """Raise an :class:`InputError` naming ``path`` when the cache cannot be written, so that a missing, stale or
        bad entry could not be recomputed; return when it can."""
        try:
            check_writable_folder(self.cache_dir, what=self.what)
        except OutputFolderError as err:
            raise InputError(path, f"{problem}; the {self.what} {self.root} is read-only ({err.problem}), so it "
                                   "cannot be recomputed: make the cache writable, or compute it into a writable "
                                   "copy") from err

    def must_compute(self, case_id: str, sources: Sequence[str]) -> bool:
        """False when the case is current (verified); True when it must be computed, once the cache is known to
        take it (a missing, stale or bad entry of a read-only cache is refused naming the file, before any work)."""
        status = self.status(case_id, sources)
        if status.current:
            return False
        if status.state == "bad":
            logger.warning("case %s: %s; recomputing it", case_id, status.describe())
        self.refuse_read_only(status.path, status.problem)
        return True

    def tidy(self, orphans: bool = True) -> list[Path]:
        """Remove what killed writers left in the partition; returns the files removed.

        Args:
            orphans: besides the temporary files (:func:`remove_stale_temps`), remove the cached files that no entry
                lists: written by a run killed before its entry (under the store lock, so never a live writer's
                new files). The files of the entry an entry replaced (``previous_files``) stay for its readers.
        """
        removed = remove_stale_temps(self.cache_dir, recursive=True)
        if orphans and self.cache_dir.is_dir():
            with self._lock(STORE_LOCK_NAME):
                for case_dir in (p for p in self.cache_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    entry = self.read_entry(case_dir.name)
                    if entry is not None:
                        removed += self._remove_unlisted(case_dir, entry.get("files", {}).values(),
                                                         entry.get("previous_files", []))
        if removed:
            logger.info("%s: removed %d file(s) left by an interrupted run", self.cache_dir, len(removed))
        return sorted(removed)

    @staticmethod
    def _remove_unlisted(case_dir: Path, *listed) -> list[Path]:
        """Remove the files of ``case_dir`` that are neither listed nor the entry (hidden files: temporary ones)."""
        keep = {ENTRY_NAME, *(name for names in listed for name in names)}
        removed = []
        for path in case_dir.iterdir():
            if path.name not in keep and not path.name.startswith(".") and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def _write_partition(self) -> None:
        path = self.cache_dir / PARTITION_NAME
        if path.is_file():
            return
        record = {"signature_sha256": self.digest, "signature": self.signature,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_text_atomic(path, json.dumps(record, indent=1))

    def store(self, case_id: str, sources: Sequence[str], prior: MetaTensor, seconds: float | None = None,
              arrays: Mapping[str, np.ndarray] | None = None) -> dict:
        """Write the priors of a case beside its current files, then its entry; returns the entry.

        Args:
            arrays: extra per-case arrays that are not images (e.g. one feature vector per slice), written as
                ``<name>.<hex12>.npy`` next to the NIfTIs, listed in the entry (so :meth:`is_current` needs them) and
                read back with :meth:`load_array`.
        """
        affine = np.asarray(prior.affine if isinstance(prior, MetaTensor) else np.eye(4), dtype=np.float64)
        kinds = list((getattr(prior, "meta", None) or {}).get("channel_names", self.kinds))
        if len(kinds) != prior.shape[0]:
            raise ValueError(f"prior has {prior.shape[0]} channels but {len(kinds)} channel names")
        for array_name in arrays or {}:
            if array_name in kinds:
                raise ValueError(f"array name {array_name!r} is also a prior kind")
        data = np.asarray(prior.detach().cpu() if isinstance(prior, torch.Tensor) else prior)
        self._write_partition()
        case_dir = self.case_dir(case_id)
        case_dir.mkdir(parents=True, exist_ok=True)
        with self._lock(STORE_LOCK_NAME):
            replaced = self.read_entry(case_id)
            files, checksums = {}, {}

            def written(key: str, target) -> None:
                files[key] = target.path.name
                checksums[key] = {"size": target.size, "sha256": target.sha256}
                remember(target.path, target.sha256)

            for k, kind in enumerate(kinds):
                dtype = np.uint8 if kind in _UINT8_KINDS or data.dtype == np.uint8 else np.float32
                with atomic_content_path(case_dir / f"{kind}.nii.gz") as target:
                    nib.save(nib.Nifti1Image(data[k].astype(dtype), affine), str(target.tmp))
                written(kind, target)
            for array_name, array in (arrays or {}).items():
                with atomic_content_path(case_dir / f"{array_name}.npy") as target, open(target.tmp, "wb") as f:
                    np.save(f, np.asarray(array))
                written(array_name, target)
            entry = {
                "format": ENTRY_FORMAT,
                "case_id": case_id,
                "signature_sha256": self.digest,
                "signature": self.signature,
                "inputs": self.fingerprints(case_id, sources),
                "kinds": kinds,
                "files": files,
                "checksums": checksums,
                # kept for a reader that read the replaced entry just before the rename
                "previous_files": sorted(set((replaced or {}).get("files", {}).values()) - set(files.values())),
                "shape": list(data.shape[1:]),
                "slices_sent_to_generator": (getattr(prior, "meta", None) or {}).get("sam_prior_slices"),
                "seconds": None if seconds is None else round(float(seconds), 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            write_text_atomic(case_dir / ENTRY_NAME, json.dumps(entry, indent=1))
            # the replaced entry's files stay: a reader may have read that entry just before the rename
            self._remove_unlisted(case_dir, files.values(), entry["previous_files"])
        return entry

    # ---- manifest ------------------------------------------------------------------------------------------------
    def manifest(self) -> dict:
        """The partition's index: its configuration and, per verified case, the inputs and files of its entry."""
        entries = {}
        for entry_file in sorted(self.cache_dir.glob(f"*/{ENTRY_NAME}")):
            case_id = entry_file.parent.name

            def listing(entry: dict | None) -> dict | None:
                if entry is None or entry.get("signature_sha256") != self.digest:
                    return None
                bad = self.entry_problem(case_id, entry)
                if bad is not None:
                    logger.warning("%s: %s; not listed in the manifest", *bad)
                    return None
                return {k: entry[k] for k in ("inputs", "files", "checksums", "created")}

            try:
                listed = self._stable(case_id, listing)
            except FileNotFoundError as err:
                logger.warning("%s: is missing; case %s is not listed in the manifest", err.filename, case_id)
                listed = None
            if listed is not None:
                entries[case_id] = listed
        return {"bundle_version": bundle.__version__, "signature": self.signature, "signature_sha256": self.digest,
                "cases": entries}

    def write_manifest(self) -> Path | None:
        """Rewrite ``manifest.json`` from the entries present, unless it already says exactly that.

        Returns:
            the manifest's path, or ``None`` when the partition holds no case yet.
        """
        path = self.cache_dir / MANIFEST_NAME
        manifest = self.manifest()
        if not manifest["cases"] and not path.exists():
            return None
        # an up-to-date cache on a read-only disk must not fail for a rewrite of the same text (nor for the lock)
        if self._manifest_says(path, manifest):
            return path
        with self._lock(MANIFEST_LOCK_NAME):
            manifest = self.manifest()  # again: another writer may have added entries while this one waited
            if not self._manifest_says(path, manifest):
                self._write_partition()
                write_text_atomic(path, json.dumps(manifest, indent=1))
        return path

    @staticmethod
    def _manifest_says(path: Path, manifest: Mapping) -> bool:
        try:
            return json.loads(path.read_text()) == json.loads(canonical_json(manifest))
        except (OSError, ValueError):
            return False

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """Hold one of the partition's locks (see the module docstring); released when the file closes."""
        if not has_fcntl:
            yield
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / name, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield


class CachedSamPriord(MapTransform):
    """Load cached SAM priors, computing (and caching) them on a miss.

    Place it after loading and ``Orientationd`` and before any resampling or cropping, so the priors live in the
    image's own grid; later spatial transforms then treat ``{key}_prior`` like the image.

    A cached case is used only once its files are verified (:meth:`PriorCache.status`); a bad one is recomputed, or,
    when the cache is read-only, refused with one error naming the file.

    Args:
        keys: image keys (one prior volume each).
        cache_dir: the prior cache folder (shared with ``configs/precompute_priors.json``); the priors live in the
            partition of ``prior``'s configuration.
        prior: the :class:`SamPrior` that computes missing priors (its signature keys the cache).
        output_postfix: priors go to ``key + output_postfix``.
        case_id_key: datalist field naming the case; the image file name is used without it.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(self, keys: KeysCollection, cache_dir: str | os.PathLike, prior: SamPrior,
                 output_postfix: str = "_prior", case_id_key: str = "case_id",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.prior = prior
        self.cache = PriorCache(cache_dir, prior.signature())
        self.output_postfix, self.case_id_key = output_postfix, case_id_key
        self._tidied_in: int | None = None  # the process that removed the partition's stale temporary files

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}{self.output_postfix}"] = self.prior_for(d, key)
        return d

    def prior_for(self, d: Mapping, key: str, progress=None) -> MetaTensor:
        image = d[key]
        case_id = case_id_of(d, key, self.case_id_key)
        sources = source_files_of(image)
        if sources and not self.cache.must_compute(case_id, sources):
            try:
                prior = self.cache.load(case_id)
            except (InputError, FileNotFoundError) as err:  # damaged or removed since it was verified
                logger.warning("case %s: %s; recomputing", case_id, err)
                path = getattr(err, "path", None) or self.cache.case_dir(case_id)
                self.cache.refuse_read_only(path, getattr(err, "problem", None) or str(err))
            else:
                if tuple(prior.shape[1:]) == tuple(image.shape[1:]):
                    if progress is not None:
                        progress(int(image.shape[-1]))
                    # same grid: carry the image's exact affine and metadata, as a freshly computed prior would
                    meta = {k: v for k, v in image.meta.items() if k != "affine"}
                    meta["channel_names"] = prior.meta["channel_names"]
                    return MetaTensor(prior.as_tensor(), affine=image.affine, meta=meta)
                problem = f"cached priors have shape {tuple(prior.shape[1:])}, the image {tuple(image.shape[1:])}"
                logger.warning("case %s: %s: recomputing", case_id, problem)
                self.cache.refuse_read_only(self.cache.case_dir(case_id) / ENTRY_NAME, problem)
        start = time.perf_counter()
        prior = self.prior(image, progress=progress)
        if sources:
            if self._tidied_in != os.getpid():  # once per process, and only where the cache is written
                self.cache.tidy(orphans=False)  # temporary files only: no scan of every entry in a training
                self._tidied_in = os.getpid()
            self.cache.store(case_id, sources, prior, seconds=time.perf_counter() - start)
        return prior
