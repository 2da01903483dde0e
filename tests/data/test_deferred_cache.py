"""Tests of bundle.data.deferred_cache: a CacheDataset that computes nothing until it is used."""

from __future__ import annotations

from monai.data import DataLoader
from monai.transforms import Compose, MapTransform, RandFlipd

from bundle.data.deferred_cache import DeferredCacheDataset


class _Counted(MapTransform):
    def __init__(self) -> None:
        super().__init__("x")
        self.calls = 0

    def __call__(self, data):
        self.calls += 1
        return {**data, "x": data["x"] * 2}


def test_nothing_is_computed_until_fill():
    counted = _Counted()
    dataset = DeferredCacheDataset([{"x": i} for i in range(5)], Compose([counted]), cache_rate=0.6)
    assert len(dataset) == 5 and counted.calls == 0 and not dataset.filled
    assert dataset.fill() is dataset and dataset.filled and counted.calls == 3  # the cached 60 %
    dataset.fill()
    assert counted.calls == 3
    assert [dataset[i]["x"] for i in range(5)] == [0, 2, 4, 6, 8] and counted.calls == 5  # 2 uncached items


def test_first_item_fills_and_random_transforms_still_run():
    counted = _Counted()
    dataset = DeferredCacheDataset([{"x": float(i)} for i in range(4)],
                                   Compose([counted, RandFlipd("x", prob=0.0)]), cache_rate=1.0)
    batches = [b["x"].tolist() for b in DataLoader(dataset, batch_size=2)]
    assert batches == [[0.0, 2.0], [4.0, 6.0]] and counted.calls == 4 and dataset.filled
    list(DataLoader(dataset, batch_size=2))
    assert counted.calls == 4  # cached


def test_runtime_cache_is_monai_s():
    counted = _Counted()
    dataset = DeferredCacheDataset([{"x": i} for i in range(3)], Compose([counted]), runtime_cache=True)
    assert dataset.filled and counted.calls == 0
    assert dataset[1]["x"] == 2 and counted.calls == 1
