"""Precompute SAM priors for every case of a datalist into the prior cache (``run precompute``).

Cases already up to date are skipped; the others are loaded exactly as the training configs load them
(checked loading, channel first, RAS orientation), computed slice by slice and written atomically. A run stopped at
any point resumes where it stopped on the next call. Progress is one bar over all slices, with slices/s and ETA.

A bad case stops the run (default) or, with ``continue_on_error``, is reported and skipped; either way the
partition's manifest is written for what the cache holds (and left alone when it already says that, so an
up-to-date cache on a read-only disk needs no write at all).
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

from bundle.atomic import remove_stale_temps, write_text_atomic
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
from bundle.priors.cache import CachedSamPriord
from bundle.priors.transforms import SamPrior

__all__ = ["PriorPrecompute", "default_loader"]

logger = logging.getLogger(__name__)


def default_loader(image_key: str = "image") -> Compose:
    """The loading every workflow uses before priors: checked reading, channel first, RAS orientation."""
    return Compose(
        [
            LoadCheckedImaged(keys=image_key, ensure_channel_first=True, image_only=True),
            Orientationd(keys=image_key, axcodes="RAS", labels=None),
        ]
    )


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
        cache folder is checked for space and writability once something needs computing.

        Raises:
            the first bad case's error (default), or, with ``continue_on_error``, a ``RuntimeError`` naming every
            bad case after all the others were done.
        """
        data = read_datalist(self.datalist)
        label_values, channels = datalist_label_values(data), datalist_image_channels(data)
        entries = self.entries()
        cache = self.cached.cache
        remove_stale_temps(cache.cache_dir, recursive=True)  # left by runs killed while writing
        todo = []
        for entry in entries:
            files = join_paths(entry, self.data_root, (self.image_key,))[self.image_key]
            if not cache.is_current(case_id_of(entry, self.image_key), [files] if isinstance(files, str) else files):
                todo.append(entry)
        if todo:
            check_writable_folder(self.cache_dir, what="prior_cache_dir")
        total = sum(int(e.get("num_slices") or 0) for e in entries) or None
        done = 0
        failed: dict[str, str] = {}
        start = time.perf_counter()
        bar = tqdm(total=total, unit="slice", desc="SAM priors", disable=not self.progress, dynamic_ncols=True)
        try:
            pending = {id(e) for e in todo}
            bar.update(sum(int(e.get("num_slices") or 0) for e in entries if id(e) not in pending))
            for entry in todo:
                case_id = case_id_of(entry, self.image_key)
                bar.set_postfix_str(case_id)
                try:
                    check_entry(entry, self.data_root, label_values=label_values, image_channels=channels,
                                image_key=self.image_key)
                    loaded = self.loader(join_paths(entry, self.data_root, (self.image_key, "label")))
                    self.cached.prior_for(loaded, self.image_key, progress=bar.update)
                    done += 1
                except (ValueError, OSError, RuntimeError) as err:
                    if not self.continue_on_error:
                        raise
                    failed[case_id] = error_line(err).removeprefix("ERROR: ")
                    logger.error("case %s skipped: %s", case_id, failed[case_id])
        finally:
            bar.close()
            # whatever happened, the manifest describes what the partition holds
            manifest = cache.write_manifest()
        summary = {"computed": done, "up_to_date": len(entries) - len(todo), "failed": len(failed),
                   "cases": len(entries), "partition": cache.cache_dir.name,
                   "manifest": None if manifest is None else str(manifest),
                   "seconds": round(time.perf_counter() - start, 2),
                   "generator": self.cached.prior.generator.signature().get("generator")}
        logger.info("SAM priors: %s", summary)
        if done or failed or not (self.cache_dir / "last_run.json").is_file():
            write_text_atomic(self.cache_dir / "last_run.json", json.dumps({**summary, "errors": failed}, indent=1))
        if failed:
            listing = "; ".join(f"{k}: {v}" for k, v in failed.items())
            raise RuntimeError(f"SAM priors: {len(failed)} of {len(entries)} case(s) could not be used: {listing}")
        return summary
