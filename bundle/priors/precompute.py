"""Precompute SAM priors for every case of a datalist into the prior cache (``run precompute``).

Cases already up to date are skipped; the others are loaded exactly as the training configs load them
(checked loading, channel first, RAS orientation), computed slice by slice and written atomically. A run stopped at
any point resumes where it stopped on the next call. Progress is one bar over all slices, with slices/s and ETA.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

from monai.data import load_decathlon_datalist
from monai.transforms import Compose, Orientationd
from tqdm import tqdm

from bundle.data.checks import LoadCheckedImaged
from bundle.atomic import write_text_atomic
from bundle.priors.cache import CachedSamPriord, case_id_of, source_files_of
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

    def entries(self) -> list[dict]:
        with open(self.datalist) as f:
            present = set(json.load(f))
        out, seen = [], set()
        for section in self.sections:
            if section not in present:
                continue
            for entry in load_decathlon_datalist(str(self.datalist), True, section, str(self.data_root)):
                cid = case_id_of(entry, self.image_key) if entry.get("case_id") else str(entry[self.image_key])
                if cid not in seen:
                    seen.add(cid)
                    out.append(entry)
        return out

    def run(self) -> dict:
        """Compute what is missing; returns counts and where the manifest is."""
        entries = self.entries()
        total = sum(int(e.get("num_slices") or 0) for e in entries) or None
        done = skipped = 0
        start = time.perf_counter()
        bar = tqdm(total=total, unit="slice", desc="SAM priors", disable=not self.progress, dynamic_ncols=True)
        try:
            for entry in entries:
                loaded = self.loader(dict(entry))
                image = loaded[self.image_key]
                case_id = case_id_of(loaded, self.image_key)
                bar.set_postfix_str(case_id)
                if self.cached.cache.is_current(case_id, source_files_of(image)):
                    skipped += 1
                    bar.update(int(image.shape[-1]))
                    continue
                self.cached.prior_for(loaded, self.image_key, progress=bar.update)
                done += 1
        finally:
            bar.close()
        manifest = self.cached.cache.write_manifest()
        summary = {"computed": done, "up_to_date": skipped, "cases": len(entries), "manifest": str(manifest),
                   "seconds": round(time.perf_counter() - start, 2),
                   "generator": self.cached.prior.generator.signature().get("generator")}
        logger.info("SAM priors: %s", summary)
        write_text_atomic(self.cache_dir / "last_run.json", json.dumps(summary, indent=1))
        return summary
