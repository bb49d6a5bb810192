"""Chest CT phantoms with one lung tumour: a whole axial field of view, as a scanner gives it.

The synthetic training blocks (`synth`) are 110 mm of tissue around a lesion. A chest CT is
different in what surrounds the lesion: air outside the body, subcutaneous fat, the chest wall
with ribs, the spine, the mediastinum (heart, aorta) and both lungs with branching vessels, on a
512 x 512 grid of 0.68-0.82 mm pixels and 2.5-5 mm slices. The tumour is either a nodule
(8-25 mm) inside the lung or a mass (25-60 mm) that abuts the chest wall or the mediastinum,
where it touches soft tissue of its own density: the hardest place to say where it ends.

The anatomy is drawn at 1 mm (z, y, x; x to the patient's left, y posterior) and acquired as
`synth` acquires its blocks (slice profile along z, linear sampling in plane). Values are
Hounsfield units. ``generate_chest_case(seed)`` is a pure function of its seed; its stats say
what was drawn.

``complicated=True`` (`sam3d phantoms --design chest-complex`) adds, to the same case, what real
lung tumours have and the plain phantoms lack (drawn from a second random stream, so the anatomy
and the tumour are those of the plain case): vessels running into the tumour and spicules out of
it, a necrotic core or an air cavity, collapsed lung (atelectasis) or a pleural effusion of nearly
the tumour's density against it, noise shaped by the reconstruction kernel, and the scanner's
storage (integer HU, a padding value outside the circular field of view).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import synth
from .io import Volume

LABELS = {"background": 0, "tumor": 1}
HEIGHT_MM = 160  # cranio-caudal extent of the simulated chest
NODULE_MM, MASS_MM = (8.0, 25.0), (25.0, 60.0)
PIXEL_MM, SLICE_MM = (0.68, 0.82), (2.5, 5.0)
LUNG_HU, SOFT_HU, FAT_HU, AIR_HU = -860.0, 40.0, -100.0, -1000.0


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 < 1.0


def _stamp_vessels(rng: np.random.Generator, lung: np.ndarray, hilum: np.ndarray, outward: float) -> np.ndarray:
    """A branching vessel tree grown from ``hilum`` (z, y, x mm) towards ``outward`` (+1: left),
    rasterised as balls of shrinking radius; kept inside the lung."""
    vessels = np.zeros(lung.shape, bool)
    ball_cache: dict[int, np.ndarray] = {}
    branches = [(hilum, np.array([rng.normal(0, 0.8), rng.normal(0, 0.5), outward]), rng.uniform(3.0, 4.5))
                for _ in range(int(rng.integers(4, 7)))]
    while branches:
        point, direction, radius = branches.pop()
        for _ in range(int(rng.integers(15, 40))):
            direction = direction / np.linalg.norm(direction) + 0.25 * rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            point = point + 2.0 * direction
            r = int(round(radius))
            if r < 1 or np.any(point < r) or np.any(point >= np.array(lung.shape) - r - 1):
                break
            if r not in ball_cache:
                grid = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
                ball_cache[r] = (grid ** 2).sum(0) <= radius ** 2 + 0.5
            z, y, x = point.astype(int)
            vessels[z - r:z + r + 1, y - r:y + r + 1, x - r:x + r + 1] |= ball_cache[r]
            radius *= 0.97
            if rng.random() < 0.2 and radius > 1.2:
                branches.append((point, direction + 0.8 * rng.standard_normal(3), radius * 0.75))
    return vessels & lung


def _anatomy(rng: np.random.Generator, fov: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """The 1 mm chest (HU) without the tumour, and its lung mask."""
    side = int(round(fov))
    z, y, x = np.meshgrid(np.arange(HEIGHT_MM, dtype=np.float32), *(np.arange(side, dtype=np.float32) - side / 2,) * 2,
                          indexing="ij", sparse=True)
    a, b = rng.uniform(140, 165), rng.uniform(95, 120)
    fat, wall = rng.uniform(8, 25), rng.uniform(10, 16)
    body = _ellipse(x, y, 0, 0, a, b)
    inner = _ellipse(x, y, 0, 0, a - fat, b - fat)
    cavity = _ellipse(x, y, 0, 0, a - fat - wall, b - fat - wall) & np.ones((HEIGHT_MM, 1, 1), bool)
    image = np.where(body, FAT_HU, AIR_HU).astype(np.float32) * np.ones((HEIGHT_MM, 1, 1), np.float32)
    image[np.broadcast_to(inner, image.shape)] = SOFT_HU + 5
    image[cavity] = SOFT_HU
    # ribs: bone cross-sections on the wall, each present over part of the height (they run obliquely)
    ca, cb = a - fat - wall / 2, b - fat - wall / 2
    for angle in np.arange(rng.uniform(0, 0.4), 2 * np.pi, rng.uniform(0.35, 0.5)):
        if abs(np.sin(angle)) > 0.93 and np.sin(angle) < 0:  # no ribs at the sternum
            continue
        rib = _ellipse(x, y, ca * np.cos(angle), cb * np.sin(angle), 5.0, 5.0)
        phase = rng.uniform(0, 28)
        present = ((np.arange(HEIGHT_MM) + phase) % 28 < 13)[:, None, None]
        image[np.broadcast_to(rib, image.shape) & present] = rng.uniform(450, 750)
    # spine, heart, aorta, mediastinum
    spine_y = b - fat - wall - 20
    vertebra = _ellipse(x, y, 0, spine_y, 20, 18)
    image[np.broadcast_to(vertebra, image.shape)] = 250
    image[np.broadcast_to(vertebra & ~_ellipse(x, y, 0, spine_y, 17, 15), image.shape)] = 800
    half_width = rng.uniform(35, 50)
    mediastinum = (np.abs(x) < half_width + 0.1 * np.maximum(-y, 0)) | _ellipse(x, y, 0, spine_y, 32, 28)
    blood = float(rng.choice([SOFT_HU, rng.uniform(150, 250)]))  # without or with contrast
    heart_z = HEIGHT_MM * rng.uniform(0.55, 0.75)
    heart = (((x - 18) / 55) ** 2 + ((y + 15) / 45) ** 2 + ((z - heart_z) / 60) ** 2) < 1
    aorta = _ellipse(x, y, -12, spine_y - 38, 14, 14) | _ellipse(x, y, 10, spine_y - 8, 12, 12)
    lung = cavity & ~np.broadcast_to(mediastinum | vertebra, cavity.shape) & ~heart
    # lungs are smaller towards the apex (z = 0): the cavity's upper part rounds off
    apex = ((x / (a - fat - wall)) ** 2 + ((y - 10) / (b - fat - wall)) ** 2) > (z / 45.0) ** 2
    lung &= ~apex
    image[lung] = LUNG_HU
    image[heart & cavity] = blood
    image[np.broadcast_to(aorta, image.shape) & cavity & ~lung] = blood
    texture = synth._smooth_noise(rng, image.shape, 16)
    image[lung] += 35 * texture[lung]
    for side_sign in (-1.0, 1.0):
        hilum_mm = (HEIGHT_MM * rng.uniform(0.45, 0.65), rng.uniform(-10, 20), side_sign * (half_width + 2))
        hilum = np.array(hilum_mm) + (0, side / 2, side / 2)  # array indices of the 1 mm grid
        image[_stamp_vessels(rng, lung, hilum, side_sign)] = blood if rng.random() < 0.5 else SOFT_HU
    stats = {"body_mm": (2 * a, 2 * b), "blood_hu": blood}
    return image, lung, stats


def _place_tumour(rng: np.random.Generator, image: np.ndarray, lung: np.ndarray) -> tuple[np.ndarray, dict]:
    """Draw the tumour inside the lung: a nodule well inside, or a mass against the lung's edge
    (chest wall or mediastinum). Returns its mask (clipped to the lung) and how it was drawn."""
    kind = "nodule" if rng.random() < 0.5 else "mass"
    low, high = NODULE_MM if kind == "nodule" else MASS_MM
    diameter = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    depth = _depth(lung)
    want = depth > diameter / 2 + 3 if kind == "nodule" else (depth > diameter * 0.3) & (depth < diameter * 0.45)
    candidates = np.argwhere(want)
    if not len(candidates):  # a large mass in a small lung: the deepest point
        candidates = np.argwhere(depth >= depth.max() - 1)
    centre = candidates[rng.integers(len(candidates))].astype(float)
    half = int(diameter * 0.8) + 6
    low_corner = np.maximum(centre.astype(int) - half, 0)
    high_corner = np.minimum(centre.astype(int) + half + 1, image.shape)
    block = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low_corner, high_corner))
    coords = synth._coordinates([s.stop - s.start for s in block])
    local, shape_stats = synth._lesion(rng, coords, centre - low_corner, diameter)
    tumour = np.zeros(image.shape, bool)
    tumour[block] = local & ndimage.binary_dilation(lung[block], iterations=2)
    value = rng.uniform(10, 60)
    texture = 20 * synth._smooth_noise(rng, coords.shape[1:], 6)
    image[block][tumour[block]] = value + texture[tumour[block]]
    return tumour, {"kind": kind, "diameter_mm": diameter, "tumour_hu": float(value), **shape_stats}


def _path(rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, length_mm: float,
          wobble: float) -> np.ndarray:
    """Points every 1 mm along a random walk of ``length_mm`` from ``start`` (z, y, x mm)."""
    points, direction = [start], direction / np.linalg.norm(direction)
    for _ in range(int(length_mm)):
        direction = direction + wobble * rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        points.append(points[-1] + direction)
    return np.array(points)


def _rasterise(shape: tuple, points: np.ndarray, radius: float) -> np.ndarray:
    """Balls of ``radius`` mm at ``points``, as a mask of ``shape`` (points outside are skipped)."""
    seeds = np.zeros(shape, bool)
    inside = np.all((points >= 0) & (points < np.array(shape) - 1), axis=1)
    seeds[tuple(np.round(points[inside]).astype(int).T)] = True
    return _distance_to(seeds, radius) <= radius


def _distance_to(mask: np.ndarray, within: float) -> np.ndarray:
    """Each voxel's distance to the mask (``ndimage.distance_transform_edt(~mask)``) where that is at
    most ``within``, inf beyond. The transform runs on the mask's bounding box grown by more than
    ``within``: the same values in the box (the whole mask lies in it), and every voxel outside
    it is farther than ``within``; in a fraction of the whole volume's time."""
    distance = np.full(mask.shape, np.inf)
    box = _grown_box(mask, int(np.ceil(within)) + 1)
    if box is not None:
        distance[box] = ndimage.distance_transform_edt(~mask[box])
    return distance


def _depth(mask: np.ndarray) -> np.ndarray:
    """``ndimage.distance_transform_edt(mask)``, run on the mask's bounding box and one voxel
    around it: the same values (each voxel's nearest background voxel lies in that box, whose
    outer layer is background), in a fraction of the time where the mask fills little of the
    volume (a lung in the chest)."""
    depth = np.zeros(mask.shape)
    box = _grown_box(mask, 1)
    if box is not None:
        depth[box] = ndimage.distance_transform_edt(mask[box])
    return depth


def _grown_box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The mask's bounding box grown by ``margin`` voxels on every side, within the volume (None
    for an empty mask)."""
    found = ndimage.find_objects(mask.view(np.uint8))
    if not found:
        return None
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(found[0], mask.shape))


def _complicate(rng: np.random.Generator, image: np.ndarray, lung: np.ndarray, tumour: np.ndarray,
                kind: str, diameter: float, tumour_hu: float) -> list[str]:
    """Draw, in place on the 1 mm chest, what real lung tumours have around and inside them;
    returns what was drawn. The label stays the tumour (a core or cavity inside it is tumour)."""
    drawn = []
    centre = np.argwhere(tumour).mean(0)
    margin = diameter / 2 + 40
    block = tuple(slice(max(int(c - margin), 0), min(int(c + margin) + 1, n)) for c, n in zip(centre, image.shape))
    view, lung_view, tumour_view = image[block], lung[block], tumour[block]
    local_centre = centre - np.array([s.start for s in block])
    outside = lung_view & ~tumour_view
    vessels = int(rng.integers(1, 4)) if kind == "nodule" else int(rng.integers(0, 3))
    for _ in range(vessels):  # a vessel through the tumour, of its density where it leaves it
        points = _path(rng, local_centre, rng.standard_normal(3), diameter / 2 + rng.uniform(20, 40), 0.1)
        view[_rasterise(view.shape, points, rng.uniform(1.0, 2.5)) & outside] = tumour_hu + rng.uniform(-15, 25)
    if vessels:
        drawn.append("vessels")
    if rng.random() < 0.5:  # spicules: thin strands out of the surface, partial volume with the lung
        strands = np.zeros(view.shape, bool)
        for _ in range(int(rng.integers(4, 12))):
            points = _path(rng, local_centre, rng.standard_normal(3), diameter / 2 + rng.uniform(4, 15), 0.05)
            strands |= _rasterise(view.shape, points, 1.0)
        view[strands & outside] = rng.uniform(-350, -50)
        drawn.append("spicules")
    inside_depth = _depth(tumour_view)
    if kind == "mass" and rng.random() < 0.4:
        core = inside_depth > inside_depth.max() * rng.uniform(0.3, 0.5)
        view[core] = tumour_hu - rng.uniform(20, 40)
        drawn.append("necrosis")
    elif diameter > 15 and rng.random() < 0.15:
        view[inside_depth > inside_depth.max() * 0.6] = rng.uniform(-950, -850)
        drawn.append("cavity")
    if kind == "mass" and rng.random() < 0.5:  # collapsed lung on one side of the mass
        offset = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) - c for n, c in zip(view.shape, local_centre)],
                                      indexing="ij"))
        side = rng.standard_normal(3)
        toward = np.tensordot(side / np.linalg.norm(side), offset, axes=1) / (np.linalg.norm(offset, axis=0) + 1e-3)
        collapse_mm = rng.uniform(8, 25)
        near = _distance_to(tumour_view, collapse_mm) < collapse_mm
        collapsed = near & (toward > 0.2) & outside
        sign = rng.choice([-1.0, 1.0])
        texture = synth._smooth_noise(rng, view.shape, 6)
        view[collapsed] = tumour_hu + sign * rng.uniform(10, 40) + 8 * texture[collapsed]
        drawn.append("atelectasis")
    if rng.random() < 0.3:  # effusion: fluid in the dependent (posterior, +y) part of the tumour's lung
        from_back = np.flip(np.cumsum(np.flip(lung, axis=1), axis=1), axis=1)
        same_side = (np.arange(lung.shape[2]) < lung.shape[2] / 2) == (centre[2] < lung.shape[2] / 2)
        effusion = lung & ~tumour & (from_back <= rng.uniform(10, 35)) & same_side[None, None, :]
        image[effusion] = rng.uniform(0, 20)
        drawn.append("effusion")
    return drawn


def _as_stored(rng: np.random.Generator, image: np.ndarray, pixel: float) -> np.ndarray:
    """Kernel-shaped noise, integer HU, and a padding value outside the circular field of view."""
    noise = ndimage.gaussian_filter(rng.standard_normal(image.shape).astype(np.float32), (0, *(rng.uniform(0.6, 1.2),) * 2))
    image = image + noise * (rng.uniform(10, 30) / (noise.std() + 1e-6))
    j, i = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in image.shape[1:]), indexing="ij")
    outside_fov = np.hypot(j, i) * pixel > image.shape[2] * pixel / 2
    image[:, outside_fov] = rng.choice([-1024.0, -2048.0, -3024.0])
    return np.round(image).astype(np.float32)


def generate_chest_case(seed: int, matrix: int = 512, complicated: bool = False) -> tuple[Volume, Volume, dict]:
    """One chest CT (HU, float32) on ``matrix`` x ``matrix`` pixels, its tumour label (uint8, 1)
    and what was drawn (stats); ``complicated``: with what real tumours have (module docstring)."""
    rng = np.random.default_rng(seed)
    pixel = float(rng.uniform(*PIXEL_MM)) * 512 / matrix
    thickness = float(rng.uniform(*SLICE_MM))
    image, lung, stats = _anatomy(rng, matrix * pixel)
    tumour, tumour_stats = _place_tumour(rng, image, lung)
    extra = np.random.default_rng([seed, 1])  # the complications' stream: the plain case's stays as it was
    if complicated:
        stats["complications"] = _complicate(extra, image, lung, tumour, tumour_stats["kind"],
                                             tumour_stats["diameter_mm"], tumour_stats["tumour_hu"])
    image = ndimage.gaussian_filter(image, rng.uniform(0.3, 0.8))  # the reconstruction kernel
    image, label = synth._acquire(image, tumour, thickness, pixel)
    white = rng.normal(0, rng.uniform(8, 25), image.shape).astype(np.float32)  # drawn either way: same origin below
    image = _as_stored(extra, image, pixel) if complicated else image + white
    spacing = (thickness, pixel, pixel)
    origin = (-(matrix * pixel) / 2, -(matrix * pixel) / 2, float(rng.uniform(-300, -100)))
    stats.update(tumour_stats, pixel_mm=pixel, slice_thickness_mm=thickness, lung_ml=float(lung.sum()) / 1000)
    return (Volume(np.ascontiguousarray(image), spacing, origin),
            Volume(np.ascontiguousarray(label), spacing, origin), stats)
