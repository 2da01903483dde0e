"""One module per dataset (nnU-Net's one-file-per-dataset habit): each module of this package defines ``DATASET``, a
:class:`DatasetModule` holding everything the bundle knows about that dataset.

That is its label values, regions and image channels (:class:`~bundle.data.dataset_spec.DatasetSpec`, with the
default WeakMedSAM task and SAM-Mix organ), its folder layouts and their scanner, its classification tasks, and the
recipe of its test phantoms (plain values that :mod:`bundle.testing.phantom_writers` reads; no product module uses
them). :mod:`bundle.data.labels`, :mod:`bundle.data.layouts` and :mod:`bundle.data.tasks` are views of this registry.

A new dataset is one new module here (``msd_spleen.py`` is the worked example of ``docs/design.md``) and a preset
(``configs/presets/<name>.json``: folders, SAM window, intensity). The modules are found by listing this package, so
nothing else is edited; they may import only the dataset-independent modules of ``bundle/data``
(``dataset_module``, ``dataset_spec``, ``classification_task``, ``layout_scan``, ``case_ids``) and each other,
never this package or the registry's views
(``tests/test_architecture.py`` counts the listing as importing each module, so a circle would be found).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from types import MappingProxyType

from bundle.data.dataset_module import DatasetModule

__all__ = ["DatasetModule", "MODULES"]


def _discover() -> Mapping[str, DatasetModule]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        dataset = getattr(module, "DATASET", None)
        if not isinstance(dataset, DatasetModule):
            raise TypeError(f"{module.__file__}: a dataset module defines DATASET = DatasetModule(...)")
        found.append(dataset)
    found.sort(key=lambda d: (d.order, d.name))
    names = [d.name for d in found]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{__path__[0]}: more than one dataset module named {repeated}")
    return MappingProxyType({d.name: d for d in found})


MODULES: Mapping[str, DatasetModule] = _discover()
"""Dataset name -> its :class:`DatasetModule`, in list order."""
