"""What a dataset module of :mod:`bundle.data.datasets` defines: its ``DATASET``, a :class:`DatasetModule`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bundle.data.classification_task import ClassificationTask
from bundle.data.dataset_spec import DatasetSpec
from bundle.data.layout_scan import DatasetScan

__all__ = ["DatasetModule"]


@dataclass(frozen=True)
class DatasetModule:
    """Everything the bundle knows about one dataset.

    Args:
        name: the dataset's name in presets (``dataset_name``), datalists (``dataset``) and on the command line
            (``scripts/prepare_datalist.py --dataset``).
        specs: its label sets; the first is the dataset's own, the others are releases with another numbering
            (``brats2023``), reached through ``aliases`` or the layout scanner. Empty for a dataset whose labels
            come from each copy's own description (the generic ``msd``).
        layouts: layout name -> the file pattern looked for (quoted in error messages).
        scan: ``root -> DatasetScan``: the cases of a dataset folder, every inconsistency a problem naming files.
        tasks: its classification tasks (SAMAug-C, WeakMedSAM, SAM-Mix).
        aliases: other names of its specs (``brats2019`` -> ``brats``).
        phantom: the recipe of its test phantoms, plain values read by :mod:`bundle.testing.phantom_writers`
            (``anatomy``, ``layout``, ``labels`` (phantom tissue -> label value), ``case_prefix``,
            ``dataset_json``); None when the phantom writer knows the dataset itself.
        order: where the dataset comes in lists (command-line choices, messages): the built-in datasets first.
    """

    name: str
    specs: tuple[DatasetSpec, ...]
    layouts: Mapping[str, str]
    scan: Callable[[str], DatasetScan]
    tasks: tuple[ClassificationTask, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    phantom: Mapping | None = None
    order: int = 100
