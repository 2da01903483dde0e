"""Phantom anatomy: abdominal CT and brain-tumour MRI as pure numpy functions.

Arrays are in index order ``(i, j, k)``, ``k`` being the axial (slice) axis. The anatomy is defined in patient
coordinates (RAS, mm, relative to the volume centre) and sampled through the voxel-to-world affine, so the liver
lies on the patient's right and the spine posterior whatever the orientation of the voxel grid, and an oblique
grid cuts oblique sections through the same anatomy. Readers that confuse axes or flips therefore produce images
whose anatomy is visibly misplaced, which is the point of the phantoms.

Everything random comes from the ``numpy.random.Generator`` passed in: same generator state, same arrays.
Volumes are rendered in slabs of slices, so memory stays bounded for large ``--size``; all smooth fields are
evaluated pointwise and blurring is in-plane only, so the result does not depend on the slab size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "BRAIN_TUMOUR",
    "CT_TISSUES",
    "MR_MODALITIES",
    "Ellipsoid",
    "SmoothField",
    "bench_phantom",
    "brain_phantom",
    "ct_phantom",
    "patient_offsets",
    "smooth_field",
]

#: organ codes of :func:`ct_phantom`'s label map (writers remap them to each dataset's numbering)
CT_TISSUES = {"liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4, "liver_tumour": 5}
#: label codes of :func:`brain_phantom` (BraTS 2019-2021 numbering: NCR/NET 1, oedema 2, enhancing 4)
BRAIN_TUMOUR = {"ncr": 1, "ed": 2, "et": 4}
#: modality names of :func:`brain_phantom` (BraTS 2019-2021 file suffixes)
MR_MODALITIES = ("flair", "t1", "t1ce", "t2")

_SLAB_VOXELS = 1 << 21
_AIR_HU, _MIN_HU, _MAX_HU = -1000.0, -1024, 3071

# MR tissue classes, and their mean signal per modality in arbitrary units (before per-case scaling).
# FLAIR suppresses CSF and shows oedema bright; T1 shows tumour dark; T1ce adds a bright enhancing rim;
# T2 shows CSF and oedema bright.
_MR_TISSUES = ("background", "scalp", "skull", "csf", "gm", "wm", "oedema", "ncr", "et")
_MR_SIGNAL = {
    "flair": (0, 250, 25, 70, 420, 330, 780, 450, 600),
    "t1": (0, 520, 30, 120, 330, 440, 300, 150, 320),
    "t1ce": (0, 520, 30, 130, 340, 450, 310, 160, 900),
    "t2": (0, 320, 25, 950, 560, 420, 780, 880, 620),
}


@dataclass(frozen=True)
class SmoothField:
    """A smooth random field: a sum of random plane waves, evaluated pointwise.

    Pointwise evaluation keeps slab-wise rendering exact, and the waves' frequencies (cycles per unit of the
    coordinates it is evaluated on) set how "low-frequency" the field is.

    Args:
        freqs: ``[M, 3]`` wave vectors.
        phases: ``[M, C]`` phases, one per output channel.
        amps: ``[M, C]`` amplitudes.
    """

    freqs: np.ndarray
    phases: np.ndarray
    amps: np.ndarray

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """Evaluate at points ``p`` (``[3, ...]``); returns ``[C, ...]`` float32."""
        out = np.zeros((self.amps.shape[1],) + p.shape[1:], np.float32)
        for f, phase, amp in zip(self.freqs, self.phases, self.amps):
            arg = np.float32(2 * np.pi) * (np.float32(f[0]) * p[0] + np.float32(f[1]) * p[1] + np.float32(f[2]) * p[2])
            for c in range(out.shape[0]):
                out[c] += np.float32(amp[c]) * np.sin(arg + np.float32(phase[c]))
        return out


def smooth_field(
    rng: np.random.Generator,
    *,
    waves: int = 6,
    freq: tuple[float, float] = (0.5, 1.5),
    amplitude: float = 1.0,
    channels: int = 1,
) -> SmoothField:
    """Sample a :class:`SmoothField` whose channels have standard deviation about ``amplitude``.

    Args:
        rng: random generator.
        waves: number of plane waves.
        freq: range of wave frequencies, cycles per coordinate unit.
        amplitude: standard deviation of each channel.
        channels: number of independent output channels (a displacement field has 3).
    """
    direction = rng.normal(size=(waves, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    freqs = direction * rng.uniform(freq[0], freq[1], size=(waves, 1))
    phases = rng.uniform(0.0, 2 * np.pi, size=(waves, channels))
    weights = rng.uniform(0.5, 1.5, size=(waves, channels))
    # a sine has variance 1/2, so sum(w^2) / 2 = 1 after this normalisation
    amps = amplitude * weights * np.sqrt(2.0 / np.sum(weights**2, axis=0, keepdims=True))
    return SmoothField(freqs, phases, amps)


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid, optionally rotated by ``angle`` (radians) about the superior axis.

    ``rho(p) < 1`` inside; ``rho`` is the normalised radius, so ``rho < 0.5`` is the inner half.
    A zero third semi-axis makes it an infinite cylinder along the superior axis.
    """

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    angle: float = 0.0

    def rho(self, p: np.ndarray) -> np.ndarray:
        x, y = p[0] - np.float32(self.centre[0]), p[1] - np.float32(self.centre[1])
        if self.angle:
            cos, sin = np.float32(np.cos(self.angle)), np.float32(np.sin(self.angle))
            x, y = cos * x + sin * y, cos * y - sin * x
        r2 = (x / np.float32(self.semi[0])) ** 2 + (y / np.float32(self.semi[1])) ** 2
        if self.semi[2]:
            r2 += ((p[2] - np.float32(self.centre[2])) / np.float32(self.semi[2])) ** 2
        return np.sqrt(r2)


def patient_offsets(shape: tuple[int, int, int], affine: np.ndarray, k0: int = 0, k1: int | None = None) -> np.ndarray:
    """Patient-space (mm) offsets from the volume centre of the voxels in slices ``k0 .. k1 - 1``.

    Args:
        shape: volume shape ``(I, J, K)``.
        affine: 4 x 4 voxel-to-world matrix (only its 3 x 3 part matters).
        k0: first slice.
        k1: one past the last slice (default: all).

    Returns:
        ``[3, I, J, k1 - k0]`` float32.
    """
    k1 = shape[2] if k1 is None else k1
    m = np.asarray(affine, np.float64)[:3, :3]
    centre = (np.asarray(shape, np.float64) - 1) / 2
    i = np.arange(shape[0]) - centre[0]
    j = np.arange(shape[1]) - centre[1]
    k = np.arange(k0, k1) - centre[2]
    out = (
        m[:, 0, None, None, None] * i[None, :, None, None]
        + m[:, 1, None, None, None] * j[None, None, :, None]
        + m[:, 2, None, None, None] * k[None, None, None, :]
    )
    return out.astype(np.float32)


def _half_extents(shape: tuple[int, int, int], affine: np.ndarray) -> tuple[float, float]:
    """Half of the in-plane and of the through-plane extent (mm), centre of first to centre of last voxel."""
    spacing = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    in_plane = min((shape[0] - 1) * spacing[0], (shape[1] - 1) * spacing[1]) / 2
    return float(in_plane), float(max(shape[2] - 1, 1) * spacing[2] / 2)


def _slabs(shape: tuple[int, int, int]) -> list[tuple[int, int]]:
    step = max(1, _SLAB_VOXELS // (shape[0] * shape[1]))
    return [(k, min(k + step, shape[2])) for k in range(0, shape[2], step)]


def _uniform_in_ball(rng: np.random.Generator, radius: float) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v) * radius * rng.uniform() ** (1 / 3)


# --------------------------------------------------------------------------------------------------- CT


@dataclass(frozen=True)
class _CtAnatomy:
    """Sampled per-case CT anatomy. Organ shapes live in slab-normalised coordinates ``U`` (in-plane mm / half
    in-plane extent, axial mm / half slab thickness), so organs always occupy the middle of the slab; round
    structures (tumours) and textures live in isotropic coordinates ``V`` (all axes / half in-plane extent)."""

    half_xy: float
    half_z: float
    deform: SmoothField
    texture: SmoothField
    lumps: SmoothField
    body: Ellipsoid
    fat: float
    muscle: float
    paraspinal: tuple[Ellipsoid, ...]
    spine_y: float
    spine_r: float
    disc_phase: float
    organs: dict[str, tuple[Ellipsoid, ...]]
    hu: dict[str, float]
    tumours: tuple[tuple[tuple[float, float, float], float, float], ...]
    noise_sd: float


def _sample_ct(rng: np.random.Generator, shape, affine, num_tumours: int) -> _CtAnatomy:
    half_xy, half_z = _half_extents(shape, affine)
    spacing = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    # one voxel in U units; at small sizes the phantom is a few cm wide but slices stay 1.5-5 mm thick, so
    # structures are kept >= 1.2 voxels (semi-axis) or they would fall between slices
    vox_xy, vox_z = float(spacing[:2].max() / half_xy), float(spacing[2] / half_z)
    a, b = rng.uniform(0.8, 0.9), rng.uniform(0.6, 0.7)
    body_y = rng.uniform(-0.04, 0.04)
    spine_y = body_y - b * rng.uniform(0.42, 0.5)
    spine_r = rng.uniform(0.09, 0.11)

    def jit(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    # axial positions stay within [-0.65, 0.7] of the slab so the first and last slices hold no organ
    zl = jit(0.05, 0.15)
    zk = jit(-0.3, -0.15)
    organs = {
        "liver": (
            Ellipsoid((jit(0.33, 0.38), jit(0.0, 0.05), zl), (jit(0.29, 0.34), jit(0.36, 0.42), jit(0.42, 0.5))),
            Ellipsoid((jit(-0.04, 0.04), jit(0.2, 0.25), zl + 0.12), (jit(0.26, 0.32), 0.15, jit(0.22, 0.28)), 0.2),
        ),
        "spleen": (Ellipsoid((jit(-0.52, -0.48), jit(-0.2, -0.1), zl + jit(0.0, 0.15)), (0.13, 0.2, 0.3), -0.5),),
        "kidney": (
            Ellipsoid((0.32, spine_y + 0.02, zk - 0.05), (0.1, 0.14, jit(0.25, 0.3)), 0.3),
            Ellipsoid((-0.32, spine_y + 0.02, zk + 0.05), (0.1, 0.14, jit(0.25, 0.3)), -0.3),
        ),
        "pancreas": (Ellipsoid((jit(-0.15, -0.08), jit(-0.14, -0.08), jit(-0.1, 0.1)), (0.28, 0.07, 0.12), -0.3),),
    }
    floor = (1.2 * vox_xy, 1.2 * vox_xy, 1.2 * vox_z)
    organs = {
        name: tuple(Ellipsoid(e.centre, tuple(max(s, f) for s, f in zip(e.semi, floor)), e.angle) for e in parts)
        for name, parts in organs.items()
    }
    liver_hu = jit(52, 68)
    hu = {
        "fat": jit(-110, -90),
        "muscle": jit(45, 55),
        "cavity": jit(-50, -30),
        "bone": jit(380, 440),
        "cortex": jit(650, 750),
        "disc": 90.0,
        "canal": 15.0,
        "aorta": jit(150, 190),
        "ivc": jit(100, 130),
        "liver": liver_hu,
        "spleen": jit(40, 50),
        "kidney": jit(25, 35),
        "pancreas": jit(35, 45),
        "liver_tumour": min(jit(12, 28), liver_hu - 25),
    }
    tumours = []
    main, others = organs["liver"][0], organs["kidney"] + organs["pancreas"] + organs["spleen"]
    for t in range(num_tumours):
        for _ in range(50):  # inside the liver, away from the organs painted over it
            c = np.asarray(main.centre) + np.asarray(main.semi) * _uniform_in_ball(rng, 0.55)
            if all(o.rho(c.astype(np.float32)[:, None]) > 1.3 for o in others):
                break
        # V units; the first lesion spans >= 1.5 voxels in-plane and axially so it cannot fall between slices
        radius = max(jit(0.1, 0.15), 1.5 * vox_xy) if t == 0 else jit(0.05, 0.13)
        radius_z = max(radius, 1.5 * vox_z * half_z / half_xy) if t == 0 else radius
        tumours.append(((float(c[0]), float(c[1]), float(c[2] * half_z / half_xy)), radius, radius_z))
    return _CtAnatomy(
        half_xy=half_xy,
        half_z=half_z,
        deform=smooth_field(rng, waves=6, freq=(0.3, 1.0), amplitude=0.03, channels=3),
        texture=smooth_field(rng, waves=8, freq=(1.5, 5.0), amplitude=1.0, channels=2),
        lumps=smooth_field(rng, waves=6, freq=(3.0, 7.0), amplitude=0.12),
        body=Ellipsoid((0.0, body_y, 0.0), (a, b, 0.0)),
        fat=jit(0.06, 0.12),
        muscle=jit(0.04, 0.06),
        paraspinal=tuple(Ellipsoid((s * 0.17, spine_y - 0.17, 0.0), (0.11, 0.09, 0.0)) for s in (1, -1)),
        spine_y=spine_y,
        spine_r=spine_r,
        disc_phase=jit(0, 1),
        organs=organs,
        hu=hu,
        tumours=tuple(tumours),
        noise_sd=jit(10, 15),
    )


def _render_ct_slab(p_mm: np.ndarray, an: _CtAnatomy) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray([an.half_xy, an.half_xy, an.half_z], np.float32)[:, None, None, None]
    u = p_mm / scale
    u = u + an.deform(u)
    v = u * (np.asarray([1.0, 1.0, an.half_z / an.half_xy], np.float32)[:, None, None, None])
    tex = an.texture(v)
    hu = np.full(p_mm.shape[1:], _AIR_HU, np.float32)
    lab = np.zeros(p_mm.shape[1:], np.uint8)
    h = an.hu

    rho = an.body.rho(u)
    hu[rho < 1] = h["fat"] + 10 * tex[0][rho < 1]
    hu[rho < 1 - an.fat] = h["muscle"]
    cavity = rho < 1 - an.fat - an.muscle
    hu[cavity] = h["cavity"] + 35 * tex[1][cavity]
    for m in an.paraspinal:
        hu[m.rho(u) < 1] = h["muscle"]

    # vertebra: cancellous body in a cortical shell, discs at regular axial intervals, canal and spinous process
    r_vert = Ellipsoid((0.0, an.spine_y, 0.0), (an.spine_r, an.spine_r, 0.0)).rho(u)
    canal_y = an.spine_y - an.spine_r * 1.6
    disc = np.mod(u[2] * 2.5 + an.disc_phase, 1.0) < 0.2
    hu[r_vert < 1] = h["cortex"]
    inner = r_vert < 0.72
    hu[inner] = h["bone"] + 30 * tex[0][inner]
    hu[(r_vert < 1) & disc] = h["disc"]
    hu[Ellipsoid((0.0, canal_y - 0.1, 0.0), (0.04, 0.07, 0.0)).rho(u) < 1] = 0.5 * (h["bone"] + h["cortex"])
    hu[Ellipsoid((0.0, canal_y, 0.0), (0.05, 0.045, 0.0)).rho(u) < 1] = h["canal"]
    hu[Ellipsoid((-0.06, an.spine_y + an.spine_r + 0.06, 0.0), (0.05, 0.05, 0.0)).rho(u) < 1] = h["aorta"]
    hu[Ellipsoid((0.09, an.spine_y + an.spine_r + 0.06, 0.0), (0.06, 0.04, 0.0)).rho(u) < 1] = h["ivc"]

    # organs in painting order: where two overlap, the later one wins
    for name in ("liver", "spleen", "kidney", "pancreas"):
        mask = np.zeros_like(cavity)
        for part in an.organs[name]:
            mask |= part.rho(u) < 1
        mask &= cavity
        lab[mask] = CT_TISSUES[name]
        hu[mask] = h[name] + 6 * tex[0][mask]
    liver = lab == CT_TISSUES["liver"]
    lumps = an.lumps(v)[0]
    for centre, radius, radius_z in an.tumours:
        r = np.float32(radius), np.float32(radius), np.float32(radius_z)
        d = np.sqrt(sum(((v[a] - np.float32(centre[a])) / r[a]) ** 2 for a in range(3))) + lumps
        mask = (d < 1) & liver
        lab[mask] = CT_TISSUES["liver_tumour"]
        # hypodense, a little darker towards the (necrotic) centre
        hu[mask] = h["liver_tumour"] - 8 * (1 - d[mask]) + 4 * tex[1][mask]
    return hu, lab


def ct_phantom(
    shape: tuple[int, int, int], affine: np.ndarray, rng: np.random.Generator, *, num_tumours: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """An abdominal CT slab with liver (and hypodense tumours), kidneys, spleen, pancreas, spine, vessels.

    The organs fill the middle of the slab (the first and last slices hold no organ), shapes are smoothly and
    randomly deformed per case, and the image has low-frequency texture, slight in-plane blur (partial volume)
    and Gaussian noise (sd 10-15 HU). HU: air -1000, fat about -100, liver about 60, spleen 45, pancreas 40,
    kidney 30, tumour about 20, vertebra 400-700.

    Args:
        shape: ``(I, J, K)``, ``K`` axial.
        affine: voxel-to-world (RAS, mm) matrix the volume will be written with.
        rng: random generator; it determines the case completely.
        num_tumours: number of liver tumours (0 for a tumour-free liver).

    Returns:
        ``(hu, labels)``: int16 HU clipped to ``[-1024, 3071]``, and a uint8 map with :data:`CT_TISSUES` codes.
    """
    if num_tumours < 0:
        raise ValueError(f"num_tumours must be >= 0, got {num_tumours}.")
    anatomy = _sample_ct(rng, shape, affine, num_tumours)
    hu = np.empty(shape, np.int16)
    labels = np.empty(shape, np.uint8)
    for k0, k1 in _slabs(shape):
        img, lab = _render_ct_slab(patient_offsets(shape, affine, k0, k1), anatomy)
        img = ndimage.gaussian_filter(img, sigma=(0.6, 0.6, 0.0), mode="nearest")
        img += anatomy.noise_sd * rng.standard_normal(img.shape, dtype=np.float32)
        hu[..., k0:k1] = np.clip(np.rint(img), _MIN_HU, _MAX_HU)
        labels[..., k0:k1] = lab
    return hu, labels


# -------------------------------------------------------------------------------------------------- MRI


@dataclass(frozen=True)
class _BrainAnatomy:
    """Sampled per-case head and tumour; coordinates are isotropic, in units of the half in-plane extent."""

    half: float
    deform: SmoothField
    gyri: SmoothField
    texture: SmoothField
    bias: SmoothField
    tumour_deform: SmoothField
    oedema_deform: SmoothField
    head: Ellipsoid
    ventricles: tuple[Ellipsoid, ...]
    centre: tuple[float, float, float]
    r_nec: float
    r_tc: float
    r_ed: float
    margin: float
    enhancing: bool
    gains: dict[str, float]
    noise_sd: float


def _sample_brain(rng: np.random.Generator, shape, affine, tumour_scale: float, enhancing: bool) -> _BrainAnatomy:
    half, _ = _half_extents(shape, affine)
    spacing = float(np.linalg.norm(np.asarray(affine, np.float64)[:3, 0]))
    head = Ellipsoid((0.0, rng.uniform(-0.03, 0.03), -0.35), (rng.uniform(0.72, 0.8), rng.uniform(0.86, 0.92), 1.6))
    brain = (head.semi[0] * 0.84, head.semi[1] * 0.84)
    vox = spacing / half
    r_ed = rng.uniform(0.19, 0.27) * tumour_scale
    centre = None
    for _ in range(100):
        c = (rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.32), rng.uniform(-0.3, 0.3), rng.uniform(-0.05, 0.05))
        reach = 1.4 * r_ed + 2 * vox
        fits = ((abs(c[0]) + reach) / brain[0]) ** 2 + ((c[1] - head.centre[1]) / brain[1]) ** 2 < 0.9 and (
            c[0] / brain[0]
        ) ** 2 + ((abs(c[1] - head.centre[1]) + reach) / brain[1]) ** 2 < 0.9
        if fits:
            centre = c
            break
    if centre is None:
        centre = (0.2, 0.0, 0.0)
    r_tc = max(r_ed * rng.uniform(0.5, 0.65), 1.2 * vox)
    lateral = rng.uniform(0.07, 0.1)
    ventricles = tuple(
        Ellipsoid((s * lateral, rng.uniform(0.0, 0.06), rng.uniform(0.0, 0.06)), (0.07, 0.22, 0.11), s * 0.18)
        for s in (1, -1)
    )
    return _BrainAnatomy(
        half=half,
        deform=smooth_field(rng, waves=6, freq=(0.3, 1.0), amplitude=0.025, channels=3),
        gyri=smooth_field(rng, waves=8, freq=(3.0, 6.0), amplitude=0.05),
        texture=smooth_field(rng, waves=8, freq=(2.0, 6.0), amplitude=1.0),
        bias=smooth_field(rng, waves=4, freq=(0.2, 0.6), amplitude=0.15),
        # gentle gradients (< 0.35 with the global field) keep the rim and the margin >= 1 voxel everywhere
        tumour_deform=smooth_field(rng, waves=6, freq=(1.5, 3.0), amplitude=0.05 * r_ed, channels=3),
        oedema_deform=smooth_field(rng, waves=6, freq=(1.5, 3.0), amplitude=0.2 * r_ed, channels=3),
        head=head,
        ventricles=ventricles,
        centre=tuple(float(x) for x in centre),
        # the enhancing rim stays 1.8 voxels thick so necrosis never touches oedema (small cores: no necrosis)
        r_nec=min(r_tc * rng.uniform(0.4, 0.6), r_tc - 1.8 * vox),
        r_tc=r_tc,
        r_ed=r_ed,
        margin=1.8 * vox,
        enhancing=enhancing,
        gains={m: float(rng.uniform(0.7, 1.4)) for m in MR_MODALITIES},
        noise_sd=float(rng.uniform(0.02, 0.035)),
    )


def _render_brain_slab(p_mm: np.ndarray, an: _BrainAnatomy) -> tuple[np.ndarray, np.ndarray]:
    v = p_mm / np.float32(an.half)
    vd = v + an.deform(v)
    tissue = np.zeros(p_mm.shape[1:], np.uint8)
    lab = np.zeros(p_mm.shape[1:], np.uint8)
    t = {name: np.uint8(i) for i, name in enumerate(_MR_TISSUES)}

    rho = an.head.rho(vd)
    tissue[rho < 1] = t["scalp"]
    tissue[rho < 0.93] = t["skull"]
    tissue[rho < 0.875] = t["csf"]
    brain = rho < 0.84
    tissue[brain] = t["gm"]
    tissue[brain & (rho + an.gyri(v)[0] < 0.68)] = t["wm"]
    tissue[brain & (np.abs(vd[0]) < 0.015) & (rho > 0.3)] = t["csf"]
    for vent in an.ventricles:
        tissue[vent.rho(vd) < 1] = t["csf"]

    # nested tumour regions from one deformed distance field: necrosis < enhancing rim < core < oedema; the
    # oedema always extends ``margin`` (1.8 voxels) beyond the core so the core never touches normal tissue
    c = np.asarray(an.centre, np.float32)[:, None, None, None]
    d_t = np.sqrt(np.sum((vd + an.tumour_deform(v) - c) ** 2, axis=0))
    d_ed = np.sqrt(np.sum((vd + an.oedema_deform(v) - c) ** 2, axis=0))
    oedema = brain & ((d_ed < an.r_ed) | (d_t < an.r_tc + an.margin))
    tissue[oedema] = t["oedema"]
    lab[oedema] = BRAIN_TUMOUR["ed"]
    core = d_t < an.r_tc
    if an.enhancing:
        tissue[core] = t["et"]
        lab[core] = BRAIN_TUMOUR["et"]
        core = d_t < an.r_nec
    tissue[core] = t["ncr"]
    lab[core] = BRAIN_TUMOUR["ncr"]
    return tissue, lab


def brain_phantom(
    shape: tuple[int, int, int],
    affine: np.ndarray,
    rng: np.random.Generator,
    *,
    tumour_scale: float = 1.0,
    enhancing: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A head (scalp, skull, CSF, grey and white matter, ventricles) with a glioma, in four MR contrasts.

    The tumour is nested: a necrotic centre (NCR, 1) inside an enhancing rim (ET, 4) forming the tumour core,
    inside oedema (ED, 2); without ``enhancing`` the whole core is non-enhancing (1), as in many low-grade cases.
    Slices above and below the tumour hold no label. Images carry a smooth multiplicative bias field and
    Rician noise; the background outside the head is exactly 0.

    Args:
        shape: ``(I, J, K)``, ``K`` axial.
        affine: voxel-to-world (RAS, mm) matrix the volumes will be written with.
        rng: random generator; it determines the case completely.
        tumour_scale: multiplies the tumour size (e.g. 0.45 for a small tumour).
        enhancing: whether the core has an enhancing rim.

    Returns:
        ``(images, labels)``: ``{"flair", "t1", "t1ce", "t2"}`` float32 volumes (arbitrary units, >= 0) and a
        uint8 label map with :data:`BRAIN_TUMOUR` codes.
    """
    if tumour_scale <= 0:
        raise ValueError(f"tumour_scale must be > 0, got {tumour_scale}.")
    anatomy = _sample_brain(rng, shape, affine, tumour_scale, enhancing)
    images = {m: np.empty(shape, np.float32) for m in MR_MODALITIES}
    labels = np.empty(shape, np.uint8)
    for k0, k1 in _slabs(shape):
        p_mm = patient_offsets(shape, affine, k0, k1)
        tissue, labels[..., k0:k1] = _render_brain_slab(p_mm, anatomy)
        v = p_mm / np.float32(anatomy.half)
        modulation = (1 + 0.04 * anatomy.texture(v)[0]) * np.exp(anatomy.bias(v)[0])
        head = tissue > 0
        for m in MR_MODALITIES:
            signal = np.asarray(_MR_SIGNAL[m], np.float32)[tissue] * modulation
            signal = ndimage.gaussian_filter(signal, sigma=(0.5, 0.5, 0.0), mode="nearest")
            sd = np.float32(anatomy.noise_sd * 440)
            real = signal + sd * rng.standard_normal(signal.shape, dtype=np.float32)
            imag = sd * rng.standard_normal(signal.shape, dtype=np.float32)
            # magnitude of complex Gaussian noise: Rician, biased upwards in dark tissue as in real MR
            images[m][..., k0:k1] = np.where(head, np.hypot(real, imag) * np.float32(anatomy.gains[m]), 0)
    return images, labels


def bench_phantom(kind: str, size: int, depth: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """One phantom volume for the benchmark scripts: ``(volume [1, size, size, depth] float32, labels, window)``.

    ``kind`` ``"brain"``: the FLAIR of :func:`brain_phantom` at 1 mm, window preset ``mr_percentile``; anything else:
    :func:`ct_phantom` in HU with two liver tumours at 0.8 mm per voxel for 128 pixels, window preset ``ct_abdomen``.
    """
    rng = np.random.default_rng(seed)
    if kind == "brain":
        images, labels = brain_phantom((size, size, depth), np.diag([-1.0, -1.0, 1.0, 1.0]), rng)
        return images["flair"][None].astype(np.float32), np.asarray(labels), "mr_percentile"
    spacing = 0.8 * 128 / size
    hu, labels = ct_phantom((size, size, depth), np.diag([-spacing, -spacing, 2.5, 1.0]), rng, num_tumours=2)
    return hu[None].astype(np.float32), np.asarray(labels), "ct_abdomen"
