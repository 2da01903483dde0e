"""WeakMedSAM's prompt affinity mining (PAM): one SAM embedding per slice, a grid of prompts, their summed logits.

``docs/methods.md`` §5 step 3: for each slice, decode ``G x G`` prompts (``G = 4``) with SAM's single-mask output and
sum their mask logits into one map ``M``, resized to the affinity grid (64 x 64) on which the random walk runs. The
authors re-ran SAM's image encoder for every one of the 16 prompts; the encoder does not see the prompt, so here it
runs once per slice (:meth:`PromptAffinityMiner.logit_maps`) and all prompts of all slices are decoded in batches.

``M`` is the sum of the prompts' logits upscaled to the slice by SAM's ``postprocess_masks`` (bilinear to the encoder
frame, crop of the padding, bilinear to the slice: the logits ``SamPredictor.predict(return_logits=True)`` gives, so
an implementation that sums predictor outputs gets the same map), then resized to the grid. That upscaling is linear,
so the sum of the upscaled logits equals the upscaled sum of the low-resolution logits: the prompts are summed at low
resolution (``[4h, 4w]``: 256 x 256 for SAM ViT-B/L/H, MedSAM and LiteMedSAM) and only the sum is upscaled, once per
slice. This costs what summing low-resolution logits costs, keeps SAM's own rule for cropping the padding (logits
outside the slice) rather than a second one of ours, and matches per-prompt decoding to float rounding.

Prompt placements (:func:`prompt_placement`):

- ``grid``: ``G x G`` single-point prompts at the cell centres of the slice (what the authors meant);
- ``grid_compat``: the authors' coordinates, ``(i + 0.5) * 4`` px, all in the top-left 16 x 16 pixels (reproduction
  of published numbers only);
- ``cam_peaks``: single points at the strongest local maxima of the classifier's CAM;
- ``boxes``: a ``G x G`` grid of box prompts, for box-trained SAMs (LiteMedSAM, MedSAM ignore point prompts).

:func:`pooled_embedding` is the slice feature of sub-class exploration (§5 step 1) taken from the same embeddings.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import look_up_option

from bundle.sam.box_grid import foreground_box
from bundle.sam.engine import SamEngine, SliceEmbeddings
from bundle.sam.factory import resolve_prompt_mode

__all__ = ["PLACEMENTS", "RESIZE_MODES", "PromptAffinityMiner", "default_placement", "embedding_cells",
           "pooled_embedding", "prompt_placement"]

PLACEMENTS = ("grid", "boxes", "cam_peaks", "grid_compat")
RESIZE_MODES = ("bilinear", "nearest")
"""How ``M`` is resized to the affinity grid: bilinear (default) or nearest (the authors' code)."""
#: pixel pitch of the authors' point coordinates (``grid_compat``)
COMPAT_PITCH = 4.0


def _points(xy: np.ndarray) -> dict:
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    return {"point_coords": xy[:, None, :], "point_labels": np.ones((len(xy), 1), np.int64)}


def _cell_centres(grid: int, width: float, height: float) -> np.ndarray:
    centres = np.arange(grid) + 0.5
    gx, gy = np.meshgrid(centres * width / grid, centres * height / grid)  # row-major: y outer, x inner
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def _cam_peaks(cam: np.ndarray, shape: tuple[int, int], count: int, min_distance: float) -> np.ndarray:
    """``[k, 2]`` (x, y) slice pixels of at most ``count`` CAM maxima, at least ``min_distance`` apart (k may be 0)."""
    if isinstance(cam, torch.Tensor):
        cam = cam.detach().cpu().numpy()
    cam = np.asarray(cam, np.float32)
    if cam.ndim == 3:
        cam = cam.max(axis=0)  # the affinity is class-agnostic: peaks of any class
    if cam.ndim != 2:
        raise ValueError(f"cams must be [C, H, W] or [H, W] per slice, got {cam.shape}")
    t = torch.from_numpy(np.ascontiguousarray(cam))[None, None]
    local_max = (t >= F.max_pool2d(t, 3, stride=1, padding=1))[0, 0].numpy()
    local_max &= cam > cam.min()  # a constant CAM (nothing found) has no peak
    rows, cols = np.nonzero(local_max)
    order = np.argsort(-cam[rows, cols], kind="stable")  # strongest first; ties in raster order
    height, width = shape
    # CAM pixel centres in slice pixels (a CAM may come at another resolution than the slice)
    xy = np.stack([(cols[order] + 0.5) * width / cam.shape[1], (rows[order] + 0.5) * height / cam.shape[0]], axis=1)
    kept: list[np.ndarray] = []
    for p in xy:
        if len(kept) == count:
            break
        if all(np.hypot(*(p - q)) >= min_distance for q in kept):
            kept.append(p)
    return np.asarray(kept, np.float32).reshape(-1, 2)


def prompt_placement(
    placement: str,
    shape: tuple[int, int],
    grid: int = 4,
    cams: np.ndarray | None = None,
    foreground: np.ndarray | None = None,
    box_margin: float = 1.0,
    peak_distance: float | None = None,
) -> dict:
    """The prompts of one slice for prompt affinity mining.

    Args:
        placement: one of :data:`PLACEMENTS`:

            - ``grid``: ``G x G`` points at the cell centres ``((i + 0.5) * W / G, (j + 0.5) * H / G)``,
              ``i, j = 0 .. G-1``.
            - ``grid_compat``: the authors' points ``((i + 0.5) * 4, (j + 0.5) * 4)`` px. For ``G = 4`` all 16 lie
              in the top-left 16 x 16 pixels of the slice whatever its size: a defect of the released code, kept only
              to reproduce its numbers.
            - ``cam_peaks``: points at the CAM's local maxima (a pixel not below any of its 8 neighbours and above
              the CAM's minimum), strongest first, keeping a peak only when it lies at least ``peak_distance`` from
              every peak kept before, at most ``G * G`` of them. A ``[C, H, W]`` CAM is reduced by the per-pixel
              maximum over classes first. A CAM of another size than the slice is mapped to it by pixel centres.
              A constant CAM has no peak: the slice gets no prompt (its ``M`` is 0).
            - ``boxes``: the region (the bounding box of ``foreground`` when given, else the whole slice) cut into
              ``G x G`` equal cells; each cell's box is enlarged by ``box_margin`` of the cell's size on every side
              and clipped to the region. A box-trained SAM segments what a box encloses, so boxes over the
              background (air, outside the skull) would only add noise to ``M``. An empty ``foreground`` gives no
              prompt (``M`` = 0), as empty slices get zero priors (``docs/methods.md`` §0).
        shape: ``(H, W)`` of the slice.
        grid: ``G``.
        cams: the slice's CAM, ``[C, H, W]`` or ``[H, W]`` (``cam_peaks`` only).
        foreground: ``[H, W]`` bool (``boxes`` only; the other placements ignore it).
        box_margin: enlargement of each cell box, as a fraction of the cell's width / height, per side. The default,
            1, makes each box three cells wide (clipped at the region's border): LiteMedSAM segments what a box
            encloses, and a cell box cuts most objects into pieces. On LiteMedSAM (4 discs, 2 liver CT and 2 tumour
            FLAIR phantom slices) the probability that ``M`` ranks an object pixel above a background pixel (AUC)
            was 0.65-0.96 with margin 0, 0.64-0.97 with 0.5, 0.77-1.00 with 1 and 0.78-1.00 with 1.5 (but 0.84 on
            one disc); point prompts (``grid``) gave 0.57-1.00.
        peak_distance: least distance between two CAM peaks in slice pixels; default ``min(H, W) / (2 G)`` (half a
            grid cell, so the peaks spread over the object rather than piling up on its strongest blob).

    Returns:
        ``{"point_coords": [N, 1, 2] float32 (x, y), "point_labels": [N, 1] int64 (all 1)}`` for point placements,
        ``{"boxes": [N, 4] float32 XYXY}`` (pixel edges) for ``boxes``; coordinates in pixels of the slice.

    Raises:
        ValueError: an unknown placement (with the closest valid name), ``cam_peaks`` without ``cams``, a bad grid.
    """
    placement = look_up_option(placement, PLACEMENTS)
    if int(grid) < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    grid, (height, width) = int(grid), (int(shape[0]), int(shape[1]))
    if placement == "grid":
        return _points(_cell_centres(grid, width, height))
    if placement == "grid_compat":
        return _points(_cell_centres(grid, grid * COMPAT_PITCH, grid * COMPAT_PITCH))
    if placement == "cam_peaks":
        if cams is None:
            raise ValueError("placement 'cam_peaks' needs the slice's CAM (cams)")
        distance = min(height, width) / (2.0 * grid) if peak_distance is None else float(peak_distance)
        return _points(_cam_peaks(cams, (height, width), grid * grid, distance))
    if box_margin < 0:
        raise ValueError(f"box_margin must be >= 0, got {box_margin}")
    region = (0, 0, width, height)
    if foreground is not None:
        if isinstance(foreground, torch.Tensor):
            foreground = foreground.detach().cpu().numpy()
        foreground = np.asarray(foreground, bool)
        if foreground.shape != (height, width):
            raise ValueError(f"foreground {foreground.shape} does not match the slice {(height, width)}")
        region = foreground_box(foreground)
        if region is None:
            return {"boxes": np.zeros((0, 4), np.float32)}
    x0, y0, x1, y1 = (float(v) for v in region)
    cw, ch = (x1 - x0) / grid, (y1 - y0) / grid
    left, top = np.meshgrid(x0 + np.arange(grid) * cw, y0 + np.arange(grid) * ch)
    left, top = left.ravel(), top.ravel()
    mx, my = box_margin * cw, box_margin * ch
    boxes = np.stack([np.maximum(left - mx, x0), np.maximum(top - my, y0),
                      np.minimum(left + cw + mx, x1), np.minimum(top + ch + my, y1)], axis=1)
    return {"boxes": boxes.astype(np.float32)}


def default_placement(engine_or_info) -> str:
    """``boxes`` for a box-trained SAM (its card says ``prompts: boxes``: LiteMedSAM, MedSAM), ``grid`` otherwise.

    Args:
        engine_or_info: a :class:`~bundle.sam.engine.SamEngine`, a :class:`~bundle.sam.loading.SamInfo` or a model
            carrying ``sam_info``; the model is never built.
    """
    info = getattr(engine_or_info, "info", None) or getattr(engine_or_info, "sam_info", None) or engine_or_info
    return "boxes" if resolve_prompt_mode("auto", info.prompts) == "boxes" else "grid"


def embedding_cells(emb: SliceEmbeddings) -> tuple[int, int]:
    """``(rows, cols)``: the first rows and columns of the ``h x w`` embedding grid that hold the slice.

    The encoder's input is the resized slice zero-padded to a square whose side is the resized slice's longest side
    (``longest_side`` preprocessing; ``square`` resizing has no padding), so the slice covers the first
    ``ceil(h * H' / max(H', W'))`` rows and ``ceil(w * W' / max(H', W'))`` columns of the grid (a cell partly over the
    slice counts); the other cells see only the padding.
    """
    in_h, in_w = emb.input_size
    side = max(in_h, in_w)
    h, w = emb.embeddings.shape[-2:]
    return min(h, -(-in_h * h // side)), min(w, -(-in_w * w // side))


def pooled_embedding(emb: SliceEmbeddings) -> torch.Tensor:
    """``[B, C]`` float32: the mean of each slice's image embedding over the embedding cells that hold the slice
    (:func:`embedding_cells`); cells over the padding only would pull every feature towards the padding's embedding.
    """
    rows, cols = embedding_cells(emb)
    return emb.embeddings[..., :rows, :cols].float().mean(dim=(-2, -1))


class PromptAffinityMiner:
    """WeakMedSAM's summed prompt logits ``M`` of slices, one encoder run per slice.

    Args:
        engine: the SAM engine (a box-trained SAM wants ``boxes``, SAM ViT-B/L/H ``grid`` or ``cam_peaks``).
        placement: one of :data:`PLACEMENTS`, or ``auto`` (:func:`default_placement` of the engine's model).
        grid: ``G``: ``G x G`` prompts per slice (at most ``G * G`` for ``cam_peaks``).
        affinity_size: side of the square affinity grid ``M`` is resized to.
        affinity_resize: how: ``bilinear`` (``align_corners=False``; default) or ``nearest`` (the authors' code).
        prompt_batch: prompts decoded together (from several slices); memory grows linearly with it, the output
            does not change.
        box_margin: see :func:`prompt_placement` (``boxes``).
        peak_distance: see :func:`prompt_placement` (``cam_peaks``).
    """

    def __init__(
        self,
        engine: SamEngine,
        placement: str = "auto",
        grid: int = 4,
        affinity_size: int = 64,
        prompt_batch: int = 64,
        box_margin: float = 1.0,
        peak_distance: float | None = None,
        affinity_resize: str = "bilinear",
    ) -> None:
        placement = look_up_option(placement, ("auto",) + PLACEMENTS)
        try:
            self.affinity_resize = look_up_option(affinity_resize, RESIZE_MODES)
        except ValueError as error:
            raise ValueError("pam_resize: " + " ".join(str(error).split())) from None
        if grid < 1 or affinity_size < 1 or prompt_batch < 1:
            raise ValueError(f"grid, affinity_size and prompt_batch must be >= 1, got {grid}, {affinity_size}, "
                             f"{prompt_batch}")
        if box_margin < 0:
            raise ValueError(f"box_margin must be >= 0, got {box_margin}")
        self.engine = engine
        self.placement = default_placement(engine) if placement == "auto" else placement
        self.grid = int(grid)
        self.affinity_size = int(affinity_size)
        self.prompt_batch = int(prompt_batch)
        self.box_margin = float(box_margin)
        self.peak_distance = None if peak_distance is None else float(peak_distance)

    def signature(self) -> dict:
        """Everything that changes :meth:`logit_maps` (a cache key); never builds the model."""
        sig = {"engine": self.engine.signature(), "placement": self.placement, "grid": self.grid,
               "affinity_size": self.affinity_size,
               "logits": f"sum of single-mask logits, upscaled, {self.affinity_resize}"}
        if self.placement == "boxes":
            sig["box_margin"] = self.box_margin
        if self.placement == "cam_peaks":
            sig["peak_distance"] = self.peak_distance
        return sig

    def prompts(self, shape: tuple[int, int], cams=None, foreground=None) -> dict:
        """The prompts of one slice (:func:`prompt_placement` with this miner's settings)."""
        return prompt_placement(self.placement, shape, self.grid, cams=cams, foreground=foreground,
                                box_margin=self.box_margin, peak_distance=self.peak_distance)

    def logit_maps(self, images: np.ndarray, cams=None, foreground=None) -> torch.Tensor:
        """``M`` of ``[B, H, W, 3]`` uint8 slices: one :meth:`SamEngine.embed` for all, then the batched decode.

        Args:
            images: the slices, SAM input (:class:`~bundle.sam.slices.SliceWindow`).
            cams: ``[B, C, H, W]`` or ``[B, H, W]`` CAMs (or a sequence of per-slice CAMs), for ``cam_peaks``.
            foreground: ``[B, H, W]`` bool, for ``boxes`` (optional).

        Returns:
            ``[B, affinity_size, affinity_size]`` float32 on the engine's device.
        """
        return self.logit_maps_from_embeddings(self.engine.embed(images), cams=cams, foreground=foreground)

    @torch.inference_mode()
    def logit_maps_from_embeddings(self, emb: SliceEmbeddings, cams=None, foreground=None) -> torch.Tensor:
        """:meth:`logit_maps` of slices already embedded by ``self.engine`` (e.g. for :func:`pooled_embedding`)."""
        n = len(emb)
        for name, value in (("cams", cams), ("foreground", foreground)):
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} slices, the embeddings {n}")
        per_slice = [self.prompts(emb.original_size, None if cams is None else cams[b],
                                  None if foreground is None else foreground[b]) for b in range(n)]
        counts = [len(next(iter(p.values()))) for p in per_slice]
        index = torch.repeat_interleave(torch.arange(n), torch.as_tensor(counts, dtype=torch.long))
        prompts = {k: torch.as_tensor(np.concatenate([p[k] for p in per_slice])) for k in per_slice[0]}
        device = self.engine.device
        low_size = [4 * s for s in emb.embeddings.shape[-2:]]  # SAM's mask decoder upscales the embedding 4x
        sums = torch.zeros(n, 1, *low_size, device=device)
        for start in range(0, len(index), self.prompt_batch):
            chunk = slice(start, start + self.prompt_batch)
            decoded = self.engine.decode_tokens(emb, index[chunk], **{k: v[chunk] for k, v in prompts.items()})
            low = self.engine.mask_logits(decoded, multimask_output=False)
            sums.index_add_(0, index[chunk].to(device), low)
        # postprocess_masks is linear: upscaling the sum equals summing the upscaled logits of every prompt
        full = self.engine.upscale(sums, emb)
        size = (self.affinity_size, self.affinity_size)
        if self.affinity_resize == "nearest":
            return F.interpolate(full, size=size, mode="nearest")[:, 0].float()
        return F.interpolate(full, size=size, mode="bilinear", align_corners=False)[:, 0].float()
