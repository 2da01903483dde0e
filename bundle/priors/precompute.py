"""Precompute SAM priors for every case of a datalist into the prior cache (``run precompute``).

Cases already up to date are skipped: their entry matches the configuration and the input files, and every cached
file has the size and sha256 its entry recorded (a truncated or changed prior is recomputed, logged, and listed under
``recomputed_bad`` in the summary and ``last_run.json``; on a read-only cache it is refused, naming the file, before
any work). The others are loaded exactly as the training configs load them
(checked loading, channel first, RAS orientation), computed slice by slice and written atomically. A run stopped at
any point resumes where it stopped on the next call. Progress is one bar over all slices, with slices/s and ETA.

A bad case stops the run (default) or, with ``continue_on_error``, is reported and skipped; either way the
partition's manifest is written for what the cache holds (and left alone when it already says that, so an
up-to-date cache on a read-only disk needs no write at all).

Under ``torchrun`` (``WORLD_SIZE > 1``) the run is sharded: the process group is joined (gloo on CPU, NCCL with
CUDA, each process on ``cuda:$LOCAL_RANK``), the datalist's case ids are sorted and global rank ``r`` of ``W`` takes
cases ``r, r + W, r + 2W, ...``, so every rank of every node gets a deterministic share. Each rank checks, computes
and writes only its own cases and shows its own progress bar. The ranks then meet (gathering their counts, which is
also the barrier), rank 0 alone writes the manifest (rebuilt from every rank's entries on disk) and
``last_run.json`` with every rank's share, and a last barrier makes the manifest exist when ``run`` returns on any
rank. A case that stops one rank stops the run on every rank after the meeting, never leaving another rank waiting.
Two jobs on one cache folder at once are safe too (see :mod:`bundle.priors.cache`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

from monai.transforms import Compose, Orientationd
from tqdm import tqdm

from bundle import distributed
from bundle.atomic import write_text_atomic
from bundle.data.case_check import check_entry
from bundle.data.case_ids import case_id_of
from bundle.data.checks import LoadCheckedImaged
from bundle.data.datalist_io import (
    check_case_ids,
    datalist_image_channels,
    datalist_label_values,
    join_paths,
    read_datalist,
    section_entries,
)
from bundle.errors import error_line
from bundle.folders import check_writable_folder
from bundle.priors.cache import MANIFEST_NAME, CachedSamPriord
from bundle.priors.transforms import SamPrior

__all__ = ["PriorPrecompute", "default_loader", "shard_case_ids"]

logger = logging.getLogger(__name__)


def default_loader(image_key: str = "image") -> Compose:
    """The loading every workflow uses before priors: checked reading, channel first, RAS orientation."""
    return Compose(
        [
            LoadCheckedImaged(keys=image_key, ensure_channel_first=True, image_only=True),
            Orientationd(keys=image_key, axcodes="RAS", labels=None),
        ]
    )


def shard_case_ids(case_ids: Sequence[str], rank: int, world_size: int) -> set[str]:
    """The case ids global rank ``rank`` of ``world_size`` computes: every ``world_size``-th of the sorted ids, from
    the ``rank``-th. Every process derives the same split from the same datalist, with no communication."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not within a job of {world_size} process(es)")
    return set(sorted(case_ids)[rank::world_size])


class PriorPrecompute:
    """Fill the prior cache for the cases of a Decathlon-style datalist.

    Args:
        datalist: the datalist JSON (``scripts/prepare_datalist.py``).
        data_root: folder the datalist's relative paths are relative to.
        cache_dir: the prior cache folder.
        prior: the :class:`SamPrior` to run.
        sections: datalist sections to cover.
        image_key: datalist key of the image.
        loader: transform loading one entry; defaults to :func:`default_loader`.
        progress: show a progress bar.
        continue_on_error: report a case that cannot be used (unreadable, non-finite, ...) and go on with the others
            instead of stopping; the run still fails at the end, naming every bad case.
    """

    def __init__(
        self,
        datalist: str | os.PathLike,
        data_root: str | os.PathLike,
        cache_dir: str | os.PathLike,
        prior: SamPrior,
        sections: Sequence[str] = ("training", "validation", "testing"),
        image_key: str = "image",
        loader=None,
        progress: bool = True,
        continue_on_error: bool = False,
    ) -> None:
        self.datalist, self.data_root = Path(datalist), Path(data_root)
        if not self.datalist.is_file():
            raise FileNotFoundError(f"datalist not found: {self.datalist.resolve()} (make it with "
                                    "scripts/prepare_datalist.py)")
        self.cache_dir = Path(cache_dir)
        self.sections, self.image_key = tuple(sections), image_key
        self.loader = loader if loader is not None else default_loader(image_key)
        self.cached = CachedSamPriord(keys=image_key, cache_dir=cache_dir, prior=prior)
        self.progress = progress
        self.continue_on_error = bool(continue_on_error)

    def entries(self) -> list[dict]:
        """The datalist's cases in the chosen sections, each once, paths as the datalist writes them.

        Raises:
            InputError: the datalist cannot be read, an entry has no image, or two different cases share a case id
                (they would share one cache slot).
        """
        data = read_datalist(self.datalist)
        sections = {name: section_entries(data, name, self.datalist, (self.image_key,))
                    for name in self.sections if isinstance(data.get(name), list) and data[name]}
        check_case_ids(sections, self.datalist, self.image_key)
        out, seen = [], set()
        for entries in sections.values():
            for entry in entries:
                cid = case_id_of(entry, self.image_key)
                if cid not in seen:
                    seen.add(cid)
                    out.append(entry)
        return out

    def run(self) -> dict:
        """Compute what is missing; returns counts and where the manifest is.

        Up-to-date cases are recognised from their files' fingerprints without loading them. Before any SAM work a
        case is checked (:func:`bundle.data.case_check.check_entry`: readable, one grid, label values), and the
        cache folder is checked for space and writability once something needs computing. Under ``torchrun`` each
        rank does its share (module docstring) and every rank returns the totals of the job.

        Raises:
            the first bad case's error (default), or, with ``continue_on_error``, a ``RuntimeError`` naming every
            bad case after all the others were done. Under ``torchrun`` the other ranks raise a ``RuntimeError``
            naming the rank that stopped and its error.
        """
        with distributed.process_group():
            return self._run()

    def _plan(self, entries: list, rank: int, world: int) -> tuple[list, list, dict]:
        """``(this rank's cases, those to compute, the bad ones)``: a case is computed when its cache entry is
        missing, stale or bad (a bad entry of a read-only cache is refused, naming the file at fault)."""
        ids = shard_case_ids([case_id_of(e, self.image_key) for e in entries], rank, world)
        # datalist order within the share: a single process runs exactly as it always did
        mine = [e for e in entries if case_id_of(e, self.image_key) in ids]
        cache = self.cached.cache
        cache.tidy()  # temporary files of runs killed while writing
        todo, invalid = [], {}
        for entry in mine:
            case_id = case_id_of(entry, self.image_key)
            files = join_paths(entry, self.data_root, (self.image_key,))[self.image_key]
            status = cache.status(case_id, [files] if isinstance(files, str) else files)
            if not status.current:  # "up to date" means verified: every cached file is what its entry recorded
                todo.append(entry)
                if status.state == "bad":  # logged when it is recomputed, listed in the summary
                    invalid[case_id] = status
        if invalid:  # a bad entry of a read-only cache: the file at fault, not just the folder
            first = next(iter(invalid.values()))
            cache.refuse_read_only(first.path, first.problem)
        if todo:
            check_writable_folder(self.cache_dir, what="prior_cache_dir")
        if world > 1:
            logger.info("SAM priors, rank %d of %d: %d of %d cases, %d to compute", rank, world, len(mine),
                        len(entries), len(todo))
        return mine, todo, invalid

    def _compute(self, mine: list, todo: list, rank: int, world: int, label_values,
                 channels) -> tuple[list[str], dict[str, str], Exception | None, Path | None]:
        """Compute the priors of ``todo`` with a progress bar over ``mine``'s slices: ``(computed case ids, failed
        case id -> reason, the error that stopped this rank under torchrun, the manifest written in one process)``.
        """
        cache = self.cached.cache
        total = sum(int(e.get("num_slices") or 0) for e in mine) or None
        computed: list[str] = []
        failed: dict[str, str] = {}
        stopped: Exception | None = None
        desc = "SAM priors" if world == 1 else f"SAM priors rank {rank}/{world}"
        bar = tqdm(total=total, unit="slice", desc=desc, disable=not self.progress, dynamic_ncols=True)
        manifest = None
        try:
            pending = {id(e) for e in todo}
            bar.update(sum(int(e.get("num_slices") or 0) for e in mine if id(e) not in pending))
            for entry in todo:
                case_id = case_id_of(entry, self.image_key)
                bar.set_postfix_str(case_id)
                try:
                    check_entry(entry, self.data_root, label_values=label_values, image_channels=channels,
                                image_key=self.image_key)
                    loaded = self.loader(join_paths(entry, self.data_root, (self.image_key, "label")))
                    self.cached.prior_for(loaded, self.image_key, progress=bar.update)
                    computed.append(case_id)
                except (ValueError, OSError, RuntimeError) as err:
                    if not self.continue_on_error:
                        raise
                    failed[case_id] = error_line(err).removeprefix("ERROR: ")
                    logger.error("case %s skipped: %s", case_id, failed[case_id])
        except Exception as err:
            if world == 1:
                raise
            stopped = err  # raised after the meeting in _run, so the other ranks are not left waiting
        finally:
            bar.close()
            if world == 1:  # whatever happened, the manifest describes what the partition holds
                manifest = cache.write_manifest()
        return computed, failed, stopped, manifest

    def _run(self) -> dict:
        data = read_datalist(self.datalist)
        label_values, channels = datalist_label_values(data), datalist_image_channels(data)
        entries = self.entries()
        rank, world = distributed.rank(), distributed.world_size()
        mine, todo, invalid = self._plan(entries, rank, world)
        cache = self.cached.cache
        start = time.perf_counter()
        computed, failed, stopped, manifest = self._compute(mine, todo, rank, world, label_values, channels)
        share = {"rank": rank, "cases": len(mine), "computed": len(computed), "up_to_date": len(mine) - len(todo),
                 "failed": len(failed), "computed_cases": computed,
                 "recomputed_bad": {k: v.describe() for k, v in invalid.items()},
                 "stopped": None if stopped is None else error_line(stopped).removeprefix("ERROR: ")}
        shares = distributed.gather_objects({**share, "errors": failed})  # also the barrier before the manifest
        if world > 1:
            if rank == 0:
                manifest = cache.write_manifest()
            distributed.barrier()
            if manifest is None and (cache.cache_dir / MANIFEST_NAME).is_file():
                manifest = cache.cache_dir / MANIFEST_NAME
        errors = {k: v for s in shares for k, v in s.pop("errors").items()}
        summary = {"computed": sum(s["computed"] for s in shares),
                   "up_to_date": sum(s["up_to_date"] for s in shares), "failed": len(errors),
                   "recomputed_bad": {k: v for s in shares for k, v in s["recomputed_bad"].items()},
                   "cases": len(entries), "partition": cache.cache_dir.name,
                   "manifest": None if manifest is None else str(manifest),
                   "seconds": round(time.perf_counter() - start, 2),
                   "generator": self.cached.prior.generator.signature().get("generator")}
        if world > 1:
            summary["ranks"] = shares
        logger.info("SAM priors: %s", summary)
        if distributed.is_main_process() and (summary["computed"] or errors or summary["recomputed_bad"]
                                               or not (self.cache_dir / "last_run.json").is_file()):
            write_text_atomic(self.cache_dir / "last_run.json", json.dumps({**summary, "errors": errors}, indent=1))
        if stopped is not None:
            raise stopped
        halted = [s for s in shares if s["stopped"]]
        if halted:
            raise RuntimeError(f"SAM priors: rank {halted[0]['rank']} stopped: {halted[0]['stopped']}")
        if errors:
            listing = "; ".join(f"{k}: {v}" for k, v in errors.items())
            raise RuntimeError(f"SAM priors: {len(errors)} of {len(entries)} case(s) could not be used: {listing}")
        return summary
