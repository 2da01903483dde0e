"""Prior cache: SAM priors are computed once per case and configuration, and reused by every epoch, run and workflow.

A cache folder holds one *partition* per configuration, so priors of several SAM models (LiteMedSAM, ViT-B, the
fallback) and of several generator settings live side by side without overwriting each other::

    <cache_dir>/<partition>/partition.json            the configuration: full signature, its sha256, when made
    <cache_dir>/<partition>/manifest.json             index of the partition's cases
    <cache_dir>/<partition>/<case_id>/<kind>.nii.gz   one NIfTI per prior kind, in the oriented image's grid
    <cache_dir>/<partition>/<case_id>/entry.json      the case's entry, written last

The partition is named after the model (or generator) and the first 12 hex digits of the sha256 of the signature:
the prior transform's signature (generator with SAM model type, checkpoint sha256, preprocessing and every
generator setting; slice window; prior kinds) plus the bundle version. The signature is computed without building
SAM (:class:`bundle.sam.engine.SamEngine` loads its model on first use), so a run whose priors are all cached never
builds SAM. ``sam-priors-cache list|prune`` (:mod:`bundle.priors.cache_cli`) shows and removes partitions.

An entry records the input files (size, mtime, sha256). A case is current when its entry matches the partition's
signature and its input files; anything else is recomputed. Every file is written under a temporary name and
renamed, and the entry comes after the NIfTIs, so a run killed at any point leaves either a complete, valid case or
one that is recomputed on the next run.

Several writers may share one cache folder at once (two precompute jobs, the ranks of a ``torchrun`` job, training
runs filling misses): entries need no coordination, since each file is renamed into place whole and two writers of
one case write the same bytes. The manifest is never merged from its previous text: every writer rebuilds it from
the entries on disk. A rebuild alone could still lose a case (writer A lists the entries, B adds one and writes its
manifest, A then writes its older list over it), so the list-and-write step runs under an exclusive ``fcntl.flock``
on ``<partition>/.manifest.lock``. Each writer writes its manifest after its own entries, so the last one to take
the lock lists every finished entry. The lock is taken only when the manifest must change (an up-to-date cache on a
read-only disk needs no write at all); where ``fcntl`` does not exist (Windows) the rebuild runs unlocked, which is
safe for one writer at a time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Hashable, Iterator, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import optional_import

import bundle
from bundle.atomic import atomic_path, write_text_atomic
from bundle.data.case_ids import case_id_of, source_files_of
from bundle.hashing import canonical_json, json_sha256, path_sha256
from bundle.priors.transforms import SamPrior

__all__ = ["PriorCache", "CachedSamPriord", "file_fingerprint", "partition_name", "PARTITION_NAME",
           "MANIFEST_NAME", "ENTRY_NAME", "MANIFEST_LOCK_NAME"]

fcntl, has_fcntl = optional_import("fcntl")  # POSIX only
logger = logging.getLogger(__name__)

ENTRY_NAME = "entry.json"
MANIFEST_NAME = "manifest.json"
MANIFEST_LOCK_NAME = ".manifest.lock"
PARTITION_NAME = "partition.json"
# binary priors are stored as uint8 (8x smaller than float32 before compression); the others as float32
_UINT8_KINDS = {"sam_boundary_prior"}
_ENTRY_KEYS = {"case_id", "signature_sha256", "inputs", "kinds", "files"}


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

    Raises:
        TypeError: the signature holds a value that is not plain JSON (see :func:`bundle.hashing.canonical_json`).
    """

    def __init__(self, cache_dir: str | os.PathLike, signature: Mapping, label: str | None = None) -> None:
        self.root = Path(cache_dir)
        self.signature = {"bundle_version": bundle.__version__, "prior": dict(signature)}
        self.digest = json_sha256(self.signature)
        name = partition_name(self.signature, self.digest) if label is None else f"{label}-{self.digest[:12]}"
        self.cache_dir = self.root / name
        self.kinds = list(signature.get("kinds", []))

    def case_dir(self, case_id: str) -> Path:
        return self.cache_dir / case_id

    def read_entry(self, case_id: str) -> dict | None:
        path = self.case_dir(case_id) / ENTRY_NAME
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            entry = None
        if not isinstance(entry, dict) or not _ENTRY_KEYS <= entry.keys():
            logger.warning("%s: unreadable cache entry, the case will be recomputed", path)
            return None
        return entry

    def fingerprints(self, case_id: str, sources: Sequence[str]) -> list[dict]:
        entry = self.read_entry(case_id) or {}
        previous = {fp["path"]: fp for fp in entry.get("inputs", [])}
        return [file_fingerprint(s, previous.get(str(Path(s).resolve()))) for s in sources]

    def is_current(self, case_id: str, sources: Sequence[str]) -> bool:
        """True when the cached priors of ``case_id`` were made from these files with this configuration."""
        entry = self.read_entry(case_id)
        if entry is None or entry.get("signature_sha256") != self.digest:
            return False
        if any(not (self.case_dir(case_id) / f).is_file() for f in entry.get("files", {}).values()):
            return False
        stored = [(fp["path"], fp["sha256"]) for fp in entry.get("inputs", [])]
        try:
            now = [(fp["path"], fp["sha256"]) for fp in self.fingerprints(case_id, sources)]
        except FileNotFoundError:
            return False
        return stored == now

    def load(self, case_id: str) -> MetaTensor:
        """The cached ``[K, H, W, D]`` priors of a case (channel names in ``meta["channel_names"]``)."""
        entry = self.read_entry(case_id)
        if entry is None:
            raise FileNotFoundError(f"no cached priors for case {case_id} in {self.cache_dir}")
        arrays, affine = [], None
        for kind in entry["kinds"]:
            path = self.case_dir(case_id) / entry["files"][kind]
            try:
                img = nib.load(str(path))
                arrays.append(np.asarray(img.dataobj, dtype=np.float32))
            except Exception as err:  # nibabel raises several types for damaged files
                raise ValueError(f"{path}: cached prior cannot be read ({type(err).__name__}: {err})") from err
            affine = img.affine
        meta = {"channel_names": list(entry["kinds"]), "filename_or_obj": str(self.case_dir(case_id))}
        return MetaTensor(torch.from_numpy(np.stack(arrays)), affine=torch.as_tensor(affine), meta=meta)

    def load_array(self, case_id: str, name: str) -> np.ndarray:
        """An extra array stored with a case's priors (``store(..., arrays={name: ...})``)."""
        entry = self.read_entry(case_id)
        if entry is None or name not in entry.get("files", {}):
            raise FileNotFoundError(f"no cached array {name!r} for case {case_id} in {self.cache_dir}")
        path = self.case_dir(case_id) / entry["files"][name]
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cached array cannot be read ({type(err).__name__}: {err})") from err

    def _write_partition(self) -> None:
        path = self.cache_dir / PARTITION_NAME
        if path.is_file():
            return
        record = {"signature_sha256": self.digest, "signature": self.signature,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_text_atomic(path, json.dumps(record, indent=1))

    def store(self, case_id: str, sources: Sequence[str], prior: MetaTensor, seconds: float | None = None,
              arrays: Mapping[str, np.ndarray] | None = None) -> dict:
        """Write the priors of a case and then its entry; returns the entry.

        Args:
            arrays: extra per-case arrays that are not images (e.g. one feature vector per slice), written as
                ``<name>.npy`` next to the NIfTIs, listed in the entry (so :meth:`is_current` needs them) and read
                back with :meth:`load_array`.
        """
        self._write_partition()
        case_dir = self.case_dir(case_id)
        case_dir.mkdir(parents=True, exist_ok=True)
        # an entry that survived a rewrite interrupted half way would vouch for a mix of old and new files
        (case_dir / ENTRY_NAME).unlink(missing_ok=True)
        affine = np.asarray(prior.affine if isinstance(prior, MetaTensor) else np.eye(4), dtype=np.float64)
        kinds = list((getattr(prior, "meta", None) or {}).get("channel_names", self.kinds))
        if len(kinds) != prior.shape[0]:
            raise ValueError(f"prior has {prior.shape[0]} channels but {len(kinds)} channel names")
        files = {}
        data = np.asarray(prior.detach().cpu() if isinstance(prior, torch.Tensor) else prior)
        for k, kind in enumerate(kinds):
            name = f"{kind}.nii.gz"
            dtype = np.uint8 if kind in _UINT8_KINDS or data.dtype == np.uint8 else np.float32
            with atomic_path(case_dir / name) as tmp:
                nib.save(nib.Nifti1Image(data[k].astype(dtype), affine), str(tmp))
            files[kind] = name
        for array_name, array in (arrays or {}).items():
            if array_name in files:
                raise ValueError(f"array name {array_name!r} is also a prior kind")
            with atomic_path(case_dir / f"{array_name}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, np.asarray(array))
            files[array_name] = f"{array_name}.npy"
        entry = {
            "case_id": case_id,
            "signature_sha256": self.digest,
            "signature": self.signature,
            "inputs": self.fingerprints(case_id, sources),
            "kinds": kinds,
            "files": files,
            "shape": list(data.shape[1:]),
            "slices_sent_to_generator": (getattr(prior, "meta", None) or {}).get("sam_prior_slices"),
            "seconds": None if seconds is None else round(float(seconds), 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_text_atomic(case_dir / ENTRY_NAME, json.dumps(entry, indent=1))
        return entry

    def manifest(self) -> dict:
        """The partition's index: its configuration and, per case, the inputs and files of its entry."""
        entries = {}
        for entry_file in sorted(self.cache_dir.glob(f"*/{ENTRY_NAME}")):
            entry = self.read_entry(entry_file.parent.name)
            if entry is not None and entry.get("signature_sha256") == self.digest:
                entries[entry["case_id"]] = {k: entry[k] for k in ("inputs", "files", "created")}
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
        with self._manifest_lock():
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
    def _manifest_lock(self) -> Iterator[None]:
        """Hold the partition's manifest lock (see the module docstring); released when the file closes."""
        if not has_fcntl:
            yield
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / MANIFEST_LOCK_NAME, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield


class CachedSamPriord(MapTransform):
    """Load cached SAM priors, computing (and caching) them on a miss.

    Place it after loading and ``Orientationd`` and before any resampling or cropping, so the priors live in the
    image's own grid; later spatial transforms then treat ``{key}_prior`` like the image.

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

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}{self.output_postfix}"] = self.prior_for(d, key)
        return d

    def prior_for(self, d: Mapping, key: str, progress=None) -> MetaTensor:
        image = d[key]
        case_id = case_id_of(d, key, self.case_id_key)
        sources = source_files_of(image)
        prior = None
        if sources and self.cache.is_current(case_id, sources):
            try:
                prior = self.cache.load(case_id)
            except ValueError as err:  # a damaged cached file (e.g. a copy cut short): compute it again
                logger.warning("case %s: %s; recomputing", case_id, err)
        if prior is not None:
            if tuple(prior.shape[1:]) == tuple(image.shape[1:]):
                if progress is not None:
                    progress(int(image.shape[-1]))
                # same grid: carry the image's exact affine and metadata, as a freshly computed prior would
                meta = {k: v for k, v in image.meta.items() if k != "affine"}
                meta["channel_names"] = prior.meta["channel_names"]
                return MetaTensor(prior.as_tensor(), affine=image.affine, meta=meta)
            logger.warning("case %s: cached priors have shape %s, image %s: recomputing", case_id,
                           tuple(prior.shape[1:]), tuple(image.shape[1:]))
        start = time.perf_counter()
        prior = self.prior(image, progress=progress)
        if sources:
            self.cache.store(case_id, sources, prior, seconds=time.perf_counter() - start)
        return prior
