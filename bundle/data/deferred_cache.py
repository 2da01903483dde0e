"""A MONAI ``CacheDataset`` that fills its cache when it is first used, not when it is built.

Building a workflow builds its datasets: MONAI's ``check_properties`` (``hasattr`` on each property instantiates it),
MONAI Label's bundle trainer, or a script that only inspects a training config would otherwise run every
deterministic transform of every case when the config is parsed, SAM priors included (minutes per case with
LiteMedSAM on two CPU cores). The training run fills the cache explicitly (:meth:`DeferredCacheDataset.fill`) before
the trainer starts its data loader, in the main process; an item read before that fills it there.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.data import CacheDataset

__all__ = ["DeferredCacheDataset"]


class DeferredCacheDataset(CacheDataset):
    """:class:`monai.data.CacheDataset` (same arguments) whose cache is filled by :meth:`fill` or the first item read.

    ``len()`` needs no cache (samplers and ``drop_last`` decisions are made without computing anything). A run that
    reads its first item inside a data loader worker fills that worker's copy only, as MONAI's ``runtime_cache``
    would: correct, but each worker then computes every case; the bundle's training configs call :meth:`fill` first.
    With ``runtime_cache`` set the dataset behaves as MONAI's.
    """

    def set_data(self, data: Sequence) -> None:
        if self.runtime_cache not in (False, None):
            super().set_data(data)
            return
        self.data, self._pending = data, data  # computed by fill()

    @property
    def filled(self) -> bool:
        """Whether the cache holds what ``cache_rate`` / ``cache_num`` ask for."""
        return getattr(self, "_pending", None) is None

    def fill(self) -> DeferredCacheDataset:
        """Run the deterministic transforms of the cached items now (once); returns the dataset."""
        if not self.filled:
            data, self._pending = self._pending, None
            super().set_data(data)
        return self

    def _transform(self, index: int):
        self.fill()
        return super()._transform(index)
