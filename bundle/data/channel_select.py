"""Keep some of an image's named channels: e.g. FLAIR alone of BraTS' four MRI sequences.

``SelectChannelsd(keys="image", names=["FLAIR", "T1", "T1ce", "T2"], keep=["FLAIR"])`` turns a ``[4, H, W, D]``
image into ``[1, H, W, D]`` (meta data kept). Names, not indices, so a config reads as the data it describes; an
unknown or repeated name is refused when the transform is built, an image whose channel count is not
``len(names)`` when it is called.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["SelectChannelsd", "channel_indices"]


def channel_indices(names: Sequence[str], keep: Sequence[str] | str) -> list[int]:
    """The indices of ``keep`` in ``names``, in ``keep``'s order.

    Raises:
        ValueError: ``keep`` empty, repeating a name, or naming a channel that ``names`` does not hold (the message
            lists the known names).
    """
    names = [str(n) for n in ([names] if isinstance(names, str) else names)]
    keep = [str(k) for k in ([keep] if isinstance(keep, str) else keep)]
    if not keep:
        raise ValueError(f"no channel to keep: name one or more of {names}")
    unknown = [k for k in keep if k not in names]
    if unknown:
        raise ValueError(f"channels {unknown} are not image channels; the image has {names}")
    if len(set(keep)) != len(keep):
        raise ValueError(f"channels to keep {keep} repeat a name")
    return [names.index(k) for k in keep]


class SelectChannelsd(MapTransform):
    """Keep the channels ``keep`` (names out of ``names``, the image's channels in order) of each key's
    channel-first image.

    Raises:
        ValueError: at construction, see :func:`channel_indices`; when called, an image whose first dimension is not
            ``len(names)``.
    """

    def __init__(self, keys: KeysCollection, names: Sequence[str], keep: Sequence[str] | str,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.names = [str(n) for n in ([names] if isinstance(names, str) else names)]
        self.indices = channel_indices(self.names, keep)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] != len(self.names):
                raise ValueError(f"{key!r} has {image.shape[0]} channels, expected {len(self.names)} "
                                 f"({self.names}) to select {[self.names[i] for i in self.indices]}")
            d[key] = image[self.indices]
        return d
