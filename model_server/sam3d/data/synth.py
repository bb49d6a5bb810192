"""Domain-randomised synthetic lesions (the SynthSeg idea) for training models that meet real scans.

A case is a block of tissue around one lesion, drawn at 1 mm and then acquired on a random grid:

- **Surroundings** (``SETTINGS``): lung parenchyma with vessels, liver, kidney (cortex and
  medulla), brain (grey / white matter, CSF, skull), next to bone, in fat with fascia; each
  over a random partition of tissue classes (smoothed-noise argmax) for texture.
- **Lesion**: 5-80 mm across (log-uniform), a noise-deformed ellipsoid, sometimes lobulated,
  sometimes with a necrotic core or an enhancing rim, darker or brighter than its surroundings
  by a random contrast.
- **Intensities**: half the cases CT-like (Hounsfield units typical of each tissue, lung -850,
  fat -100, bone +300..+1200), half MRI-like (random values per class in arbitrary units, either
  polarity, a multiplicative bias field); then gamma, blur, noise.
- **Acquisition**: in-plane pixels 0.5-1.2 mm, slices 0.5-7 mm thick (partial volume: the slice
  profile averages along k), random flips of the in-plane axes and their order.

**Subtle cases** (``subtle=True``; `sam3d phantoms --design subtle`): CT-like, never in lung,
the lesion only 8-40 HU (log-uniform) off its surroundings, with air outside a body wall
crossing the block beyond the lesion. Scaled by its own percentiles, as the ``percentile``
preset does, such a lesion stands about 0.01-0.03 of the range from its surroundings, where the
other cases' lesions stand 0.14 and more (docs/BENCHMARKS.md, "Why the unseen-design
phantoms' first click stays low").

``generate_synth_case(seed)`` is a pure function of its seed; ``SynthCase.stats`` reports what
was drawn, so tests can check the generator does what this docstring says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .io import Volume

SETTINGS = ("lung", "liver", "kidney", "brain", "bone", "fat")
LABELS = {"background": 0, "tumor": 1}
LESION_DIAMETER_MM = (5.0, 80.0)
SLICE_THICKNESS_MM = (0.5, 7.0)
PIXEL_MM = (0.5, 1.2)
FIELD_MM = 110.0  # side of the simulated block at 1 mm (the model's 96 mm crop fits inside)
SUBTLE_SETTINGS = ("liver", "kidney", "brain", "bone", "fat")
SUBTLE_CONTRAST_HU = (8.0, 40.0)
AIR_HU = -1000.0
BODY_WALL_MM = (8.0, 25.0)  # a subtle case's air begins this far beyond the lesion's edge


@dataclass
class SynthCase:
    image: Volume
    label: Volume
    stats: dict = field(default_factory=dict)


def _spline_upsampling_matrix(cells: int, size: int) -> np.ndarray:
    """(size, cells) matrix of ``ndimage.zoom(..., order=3, mode="reflect")`` along one axis,
    column i being the zoom of the i-th unit vector."""
    unit_vectors = np.eye(cells)
    return np.stack([ndimage.zoom(unit_vectors[i], size / cells, order=3, mode="reflect")[:size]
                     for i in range(cells)], axis=1)


def _smooth_noise(rng: np.random.Generator, shape, cells: int) -> np.ndarray:
    """Smooth random field in [-1, 1]-ish: Gaussian noise on a coarse grid, upsampled by a cubic
    spline. The 3D ``ndimage.zoom`` is separable, so it is applied as one 1D matrix per axis:
    the same field to 1e-14, 10-20x faster than zooming the volume (about 1 s per field here)."""
    coarse = rng.standard_normal((cells,) * 3)
    rows, cols, slices = (_spline_upsampling_matrix(cells, n) for n in shape)
    field_ = np.einsum("ai,bj,ck,ijk->abc", rows, cols, slices, coarse, optimize=True)
    return field_ / (np.abs(field_).max() + 1e-6)


def _coordinates(shape) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))


def _ellipsoid(coords: np.ndarray, centre, radii, rotation: np.ndarray) -> np.ndarray:
    """Normalised radius of every voxel for a rotated ellipsoid (< 1 inside)."""
    offset = (coords - np.asarray(centre, np.float32)[:, None, None, None]).reshape(3, -1)
    local = rotation.T.astype(np.float32) @ offset
    return np.sqrt(((local / np.asarray(radii, np.float32)[:, None]) ** 2).sum(0)).reshape(coords.shape[1:])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _tissue_classes(rng, shape, count: int) -> np.ndarray:
    """Random partition into ``count`` blob-shaped classes (argmax of smooth fields)."""
    fields = np.stack([_smooth_noise(rng, shape, int(rng.integers(3, 7))) for _ in range(count)])
    return np.argmax(fields, axis=0)


def _tubes(rng, shape, count: int, radius_mm: tuple[float, float]) -> np.ndarray:
    """Vessel-like tubes: random smooth curves rasterised with a random radius."""
    mask = np.zeros(shape, bool)
    for _ in range(count):
        start = rng.uniform(0, shape)
        direction = rng.standard_normal(3)
        radius = rng.uniform(*radius_mm)
        points = [start]
        for _ in range(40):
            direction = direction / np.linalg.norm(direction) + 0.35 * rng.standard_normal(3)
            points.append(points[-1] + 4.0 * direction / np.linalg.norm(direction))
        points = np.array(points)
        inside = np.all((points >= 0) & (points < np.array(shape)), axis=1)
        if not inside.any():
            continue
        seeds = np.zeros(shape, bool)
        for p in points[inside]:
            seeds[tuple(p.astype(int))] = True
        mask |= ndimage.distance_transform_edt(~ndimage.binary_dilation(seeds, iterations=2)) < radius
    return mask


def _lesion(rng, coords, centre, diameter_mm: float) -> tuple[np.ndarray, dict]:
    """Lesion mask: a deformed (sometimes lobulated) ellipsoid, and how it was drawn."""
    shape = coords.shape[1:]
    radius = diameter_mm / 2
    lobes = int(rng.choice([1, 1, 1, 2, 3]))
    distance = np.full(shape, np.inf, np.float32)
    for lobe in range(lobes):
        axes = radius * rng.uniform(0.65, 1.0, 3) * (1.0 if lobe == 0 else rng.uniform(0.5, 0.8))
        shift = 0 if lobe == 0 else rng.standard_normal(3) * radius * 0.6
        distance = np.minimum(distance, _ellipsoid(coords, np.asarray(centre) + shift, axes, _random_rotation(rng)))
    roughness = rng.uniform(0.0, 0.3)
    deformed = distance + roughness * _smooth_noise(rng, shape, int(rng.integers(4, 9)))
    mask = deformed < 1.0
    labelled, count = ndimage.label(mask)
    if count > 1:  # keep the component holding the centre, or the largest
        mask = labelled == (1 + int(np.argmax(np.bincount(labelled.ravel())[1:])))
    return mask, {"lobes": lobes, "roughness": roughness}


# Typical CT numbers (HU) of each setting's classes: (background classes, structure, its HU)
_CT_HU = {
    "lung": ((-870.0, -820.0, -780.0), 40.0),    # parenchyma; vessels
    "liver": ((55.0, 65.0, 70.0), 130.0),        # parenchyma; vessels (contrast)
    "kidney": ((30.0, 40.0, -90.0), 160.0),      # medulla, fat around; cortex
    "brain": ((30.0, 38.0, 10.0), 700.0),        # white, grey, CSF; skull
    "bone": ((40.0, 20.0, -80.0), 900.0),        # muscle, soft tissue, fat; cortical bone
    "fat": ((-100.0, -90.0, -110.0), 30.0),      # fat; fascia
}


def _structures(rng, setting: str, coords) -> np.ndarray:
    """The setting's distinctive structure (vessels, cortex, skull, bone, fascia) as a mask."""
    shape = coords.shape[1:]
    if setting in ("lung", "liver"):
        return _tubes(rng, shape, int(rng.integers(4, 12)), (0.8, 3.0) if setting == "lung" else (1.5, 5.0))
    centre = np.array(shape) / 2 + rng.uniform(-25, 25, 3)
    if setting == "kidney":
        r = _ellipsoid(coords, centre, rng.uniform(30, 45, 3), _random_rotation(rng))
        return (r > 0.75) & (r < 1.0)
    if setting == "brain":
        r = _ellipsoid(coords, centre, rng.uniform(60, 80, 3), _random_rotation(rng))
        return (r > 0.92) & (r < 1.0)
    if setting == "bone":
        r = _ellipsoid(coords, centre, [rng.uniform(15, 30), rng.uniform(15, 30), 200.0], _random_rotation(rng))
        return r < 1.0
    sheets = np.abs(_smooth_noise(rng, shape, int(rng.integers(3, 6)))) < rng.uniform(0.02, 0.05)
    return sheets


def generate_synth_case(seed: int, setting: str | None = None, ct_like: bool | None = None,
                        subtle: bool = False) -> SynthCase:
    """One domain-randomised case: image (float32) and label (uint8, 1 = lesion) on a random grid.
    ``setting`` and ``ct_like`` fix those draws (tests, datasets of one kind); ``subtle``: a
    low-contrast CT-like case beside air (module docstring)."""
    rng = np.random.default_rng(seed)
    drawn_setting, drawn_ct = str(rng.choice(SETTINGS)), bool(rng.random() < 0.5)
    if subtle:  # draws of its own after the common ones: the other cases stay as they were
        drawn_setting, drawn_ct = str(rng.choice(SUBTLE_SETTINGS)), True
    setting = drawn_setting if setting is None else setting
    ct_like = drawn_ct if ct_like is None else bool(ct_like)
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {', '.join(SETTINGS)}")
    shape = (int(FIELD_MM),) * 3
    coords = _coordinates(shape)
    classes = _tissue_classes(rng, shape, 3)
    structure = _structures(rng, setting, coords)
    diameter = float(np.exp(rng.uniform(*np.log(LESION_DIAMETER_MM))))
    centre = np.array(shape) / 2 + rng.uniform(-8, 8, 3)
    if setting == "bone":  # the lesion abuts the bone: move it to one radius from the nearest bone voxel
        _, nearest = ndimage.distance_transform_edt(~structure, return_indices=True)
        bone = nearest[(slice(None),) + tuple(np.clip(centre.astype(int), 0, np.array(shape) - 1))].astype(float)
        away = centre - bone
        if np.linalg.norm(away) > 1e-3:
            centre = bone + away / np.linalg.norm(away) * diameter / 2 * 0.9
    lesion, shape_stats = _lesion(rng, coords, centre, diameter)

    if ct_like:
        base, structure_value = _CT_HU[setting]
        class_values = np.array(base) + rng.normal(0, 8, 3)
        texture_sd = rng.uniform(5, 25)
        if subtle:  # texture below the lesion's contrast: the lesion stays as dark or bright as drawn
            texture_sd = rng.uniform(2, 6)
    else:
        class_values = rng.uniform(0, 1, 3)
        structure_value = rng.uniform(0, 1)
        texture_sd = rng.uniform(0.0, 0.05)
    image = class_values[classes].astype(np.float32)
    image += texture_sd * _smooth_noise(rng, shape, 20)
    image[structure] = structure_value
    surround = float(np.median(image[ndimage.binary_dilation(lesion, iterations=4) & ~lesion]))
    spread = float(np.ptp(class_values)) + abs(structure_value - float(np.mean(class_values)))
    scale = 150.0 if ct_like else max(spread, 0.2)
    brighter = bool(rng.random() < 0.5)
    contrast = rng.uniform(0.15, 1.0) * scale * (1 if brighter else -1)
    if subtle:
        contrast = float(np.exp(rng.uniform(*np.log(SUBTLE_CONTRAST_HU)))) * (1 if brighter else -1)
    lesion_value = surround + contrast
    if ct_like and setting == "lung":  # a lung tumour is soft tissue in air-filled lung
        lesion_value, brighter = rng.uniform(-20, 80), True
    image[lesion] = lesion_value + texture_sd * _smooth_noise(rng, shape, 12)[lesion]
    air_fraction = 0.0
    if subtle:
        outside = _beyond_body_wall(rng, coords, centre, diameter) & ~lesion
        image[outside] = AIR_HU
        air_fraction = float(outside.mean())
    core = ""
    if diameter > 20 and rng.random() < 0.3:  # necrotic core
        inner = ndimage.binary_erosion(lesion, iterations=max(2, int(diameter / 6)))
        image[inner] = lesion_value - 0.5 * contrast
        core = "necrotic"
    elif rng.random() < 0.2:  # enhancing rim
        rim = lesion & ~ndimage.binary_erosion(lesion, iterations=2)
        image[rim] = lesion_value + 0.5 * abs(contrast)
        core = "rim"

    if not ct_like:
        if rng.random() < 0.5:  # either polarity
            image = image.max() + image.min() - image
            brighter = not brighter
        image *= np.exp(rng.uniform(0.1, 0.5) * _smooth_noise(rng, shape, 3)).astype(np.float32)  # bias field
        low, high = float(image.min()), float(image.max())
        gamma = float(np.exp(rng.normal(0, 0.3)))
        image = (((image - low) / (high - low + 1e-6)) ** gamma * rng.uniform(100, 4000)).astype(np.float32)
    blur_mm = rng.uniform(0.0, 1.0)
    if blur_mm > 0.1:
        image = ndimage.gaussian_filter(image, blur_mm)

    thickness = float(np.exp(rng.uniform(*np.log(SLICE_THICKNESS_MM))))
    pixel = float(rng.uniform(*PIXEL_MM))
    image, label = _acquire(image, lesion, thickness, pixel)
    noise = rng.uniform(3, 25) if ct_like else rng.uniform(0.005, 0.06) * float(np.ptp(image))
    image = image + rng.normal(0, noise, image.shape).astype(np.float32)
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    if rng.random() < 0.5:
        image, label = image[:, :, ::-1], label[:, :, ::-1]
    if rng.random() < 0.5:
        image, label = image.transpose(0, 2, 1), label.transpose(0, 2, 1)
    spacing = (thickness, pixel, pixel)
    origin = tuple(float(v) for v in rng.uniform(-200, 200, 3))
    stats = {"setting": setting, "ct_like": ct_like, "diameter_mm": diameter, "brighter": brighter,
             "contrast": float(contrast), "slice_thickness_mm": thickness, "pixel_mm": pixel,
             "noise_sd": float(noise), "core": core, "subtle": subtle, "air_fraction": air_fraction,
             **shape_stats}
    return SynthCase(Volume(np.ascontiguousarray(image, dtype=np.float32), spacing, origin),
                     Volume(np.ascontiguousarray(label, dtype=np.uint8), spacing, origin), stats)


def _beyond_body_wall(rng, coords: np.ndarray, centre: np.ndarray, diameter: float) -> np.ndarray:
    """The half of the block beyond a plane of random orientation ``BODY_WALL_MM`` past the
    lesion's edge: outside the body."""
    normal = rng.normal(size=3)
    normal /= np.linalg.norm(normal)
    distance = diameter / 2 + rng.uniform(*BODY_WALL_MM)
    return np.tensordot(normal, coords - np.asarray(centre)[:, None, None, None], axes=1) > distance


def _acquire(image: np.ndarray, lesion: np.ndarray, thickness: float, pixel: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample the 1 mm block on a grid of ``thickness`` mm slices (k) and ``pixel`` mm pixels:
    the slice profile (a box of the slice thickness) averages along k - partial volume - and the
    label is the lesion's covered fraction > 0.5."""
    profile = max(1, int(round(thickness)))
    averaged = ndimage.uniform_filter1d(image, profile, axis=0) if profile > 1 else image
    fraction = ndimage.uniform_filter1d(lesion.astype(np.float32), profile, axis=0) if profile > 1 else lesion.astype(np.float32)
    k, j, i = (np.arange(0, n - 1, step) for n, step in zip(image.shape, (thickness, pixel, pixel)))
    grid = np.meshgrid(k, j, i, indexing="ij")
    sampled = ndimage.map_coordinates(averaged, grid, order=1, mode="nearest")
    covered = ndimage.map_coordinates(fraction, grid, order=1, mode="nearest")
    return sampled.astype(np.float32), (covered > 0.5).astype(np.uint8)
