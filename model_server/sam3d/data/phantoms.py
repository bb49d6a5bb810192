"""Synthetic CT-like phantoms holding small, irregular, low-contrast tumors.

Each case is a patch of abdomen on an anisotropic CT grid with a random orientation and origin:
air, a body outline (subcutaneous fat, a fat / soft-tissue mix inside), a vertebra-like bone,
a vessel, one or two distractor organs and one or two host organs (label 1) holding one to three
tumors (label 2) that differ from their organ by only 20-50 HU. The anatomy lives in physical
(LPS) space and the grid samples it, so the same patient looks different in every orientation.
Noise and a mild blur make it look scanned. Everything is drawn from one seed.

`write_dataset` writes the cases in the MSD / nnU-Net raw layout (``imagesTr/``, ``labelsTr/``,
``dataset.json``) that `sam3d.data.datasets.find_cases` reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from . import chest, synth
from .clicks import centre_click, label_objects
from .io import Volume, write_image
from .markups import write_lesion_markups

LABELS = {"background": 0, "organ": 1, "tumor": 2}
TUMOR_LABEL = LABELS["tumor"]
MIN_TUMOR_VOXELS = 30
FILE_ENDING = ".nii.gz"
CLICKS_ENDING = ".mrk.json"  # clicksTr/<case>.mrk.json: one positive click per tumor
MANIFEST_NAME = "manifest.json"  # a `sam3d batch` manifest of every case

AIR_HU = -1000.0


@dataclass
class _Grid:
    """Physical coordinates (mm, LPS, relative to the volume centre) of every voxel."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # kji
    direction: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @classmethod
    def build(cls, shape, spacing, direction) -> "_Grid":
        axes = [
            ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s) for n, s in zip(shape, spacing)
        ]
        uk = axes[0][:, None, None]
        uj = axes[1][None, :, None]
        ui = axes[2][None, None, :]
        d = direction.astype(np.float32)
        # columns of the direction matrix are the i, j, k axes
        x, y, z = (d[r, 0] * ui + d[r, 1] * uj + d[r, 2] * uk for r in range(3))
        return cls(tuple(shape), tuple(spacing), direction, x, y, z)

    def index_box(self, centre_mm: np.ndarray, radius_mm: float) -> tuple[slice, slice, slice]:
        """Array slices holding the ball of ``radius_mm`` around a (centre-relative) point."""
        index_ijk = np.linalg.solve(self.direction * np.array(self.spacing[::-1]), centre_mm)
        index_kji = index_ijk[::-1] + (np.array(self.shape) - 1) / 2
        half = radius_mm / np.array(self.spacing)
        low = np.maximum(np.floor(index_kji - half).astype(int), 0)
        high = np.minimum(np.ceil(index_kji + half).astype(int) + 1, self.shape)
        return tuple(slice(int(a), int(max(a, b))) for a, b in zip(low, high))


def generate_case(seed: int, shape: tuple[int, int, int] | None = None) -> tuple[Volume, Volume]:
    """One phantom: (image int16 HU, label uint8: 0 background, 1 host organ, 2 tumor).

    ``shape`` (kji) overrides the drawn size (48-64 x 128-160 x 128-160); the anatomy scales
    with the field of view, the spacing stays in its realistic range.
    """
    rng = np.random.default_rng(seed)
    drawn_shape = (int(rng.integers(48, 65)), int(rng.integers(128, 161)), int(rng.integers(128, 161)))
    shape = tuple(int(n) for n in (shape or drawn_shape))
    in_plane = float(rng.uniform(0.7, 1.0))
    spacing = (float(rng.uniform(2.0, 3.5)), in_plane, in_plane)
    direction = _random_direction(rng)
    grid = _Grid.build(shape, spacing, direction)

    extent_ijk = np.array(spacing[::-1]) * np.array(shape[::-1])
    extent_lps = np.abs(direction) @ extent_ijk  # field of view along x, y, z (mm)
    image, interior = _body(rng, grid, extent_lps)
    label = np.zeros(shape, dtype=np.uint8)
    host_organs = _organs(rng, grid, image, interior, extent_lps)
    organ_union = np.zeros(shape, dtype=bool)
    for organ in host_organs:
        organ_union |= organ.mask
    label[organ_union] = LABELS["organ"]
    _tumors(rng, grid, image, label, host_organs)

    blur_mm = 0.7
    image = ndimage.gaussian_filter(image, sigma=[blur_mm / s for s in spacing])
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=(0.0, 0.6, 0.6))
    # quantum noise is weaker where little is absorbed: a third of it in the air around the body
    noise_level = np.where(image < -500.0, np.float32(1 / 3), np.float32(1.0))
    image += noise * noise_level * (float(rng.uniform(8.0, 15.0)) / float(noise.std()))
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)

    centre_lps = np.array([rng.uniform(-150, 150), rng.uniform(-150, 150), rng.uniform(-400, 100)])
    origin = centre_lps - direction @ (np.array(spacing[::-1]) * (np.array(shape[::-1]) - 1) / 2)
    image_volume = Volume(image, spacing, tuple(origin), direction)
    return image_volume, image_volume.with_array(label)


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    """k along the body axis (either way), i / j in the axial plane in either order and sense,
    tilted by a small oblique rotation (up to 15 degrees)."""
    in_plane = [0, 1] if rng.random() < 0.5 else [1, 0]
    permutation = np.zeros((3, 3))
    for column, row in enumerate(in_plane + [2]):
        permutation[row, column] = rng.choice([-1.0, 1.0])
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    tilt = Rotation.from_rotvec(axis * np.deg2rad(rng.uniform(0.0, 15.0))).as_matrix()
    return tilt @ permutation


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: tuple[int, ...]) -> np.ndarray:
    """A smooth random field with unit standard deviation: ``cells`` random values per axis,
    blended by separable Gaussian weights (much faster than ndimage.zoom on a full volume)."""
    field = rng.standard_normal(cells).astype(np.float32)
    for axis, (n, c) in enumerate(zip(shape, cells)):
        position = (np.arange(n) + 0.5) / n * c  # in cell units
        weights = np.exp(-0.5 * (position[:, None] - (np.arange(c) + 0.5)[None, :]) ** 2)
        weights /= weights.sum(axis=1, keepdims=True)
        field = np.moveaxis(np.tensordot(weights.astype(np.float32), field, axes=(1, axis)), 0, axis)
    return field / max(float(field.std()), 1e-6)


def _ellipsoid(grid: _Grid, centre, semi_axes, rotation: np.ndarray, box=None) -> np.ndarray:
    """Normalised radius (< 1 inside) of a rotated ellipsoid, on the grid or a box of it."""
    box = box or (slice(None),) * 3
    offsets = [grid.x[box] - centre[0], grid.y[box] - centre[1], grid.z[box] - centre[2]]
    radius2 = 0.0
    for axis in range(3):
        along = rotation[0, axis] * offsets[0] + rotation[1, axis] * offsets[1] + rotation[2, axis] * offsets[2]
        radius2 = radius2 + (along / semi_axes[axis]) ** 2
    return np.sqrt(radius2)


def _body(rng, grid: _Grid, extent):
    """Air, body outline with subcutaneous fat, a fat / soft-tissue mix inside."""
    semi_x = rng.uniform(0.40, 0.47) * extent[0]
    semi_y = min(rng.uniform(0.32, 0.40) * extent[1], 0.9 * semi_x)
    fat = rng.uniform(0.05, 0.09) * min(extent[0], extent[1])
    centre = rng.uniform(-0.03, 0.03, size=2) * extent[:2]
    swell = 1.0 + 0.05 * np.sin(grid.z / rng.uniform(40, 80) + rng.uniform(0, 2 * np.pi))
    outline = np.sqrt(((grid.x - centre[0]) / semi_x) ** 2 + ((grid.y - centre[1]) / semi_y) ** 2) / swell
    body = outline < 1.0
    inner = outline < 1.0 - fat / semi_y
    image = np.full(grid.shape, AIR_HU, dtype=np.float32)
    image[body] = rng.uniform(-110, -80)
    # inside: soft tissue (muscle, bowel) blended with visceral fat by a smooth random field
    mix = 1.0 / (1.0 + np.exp(-4.0 * _smooth_field(rng, grid.shape, (4, 6, 6))))
    soft, visceral_fat = rng.uniform(20, 45), rng.uniform(-100, -60)
    image[inner] = (visceral_fat + mix * (soft - visceral_fat))[inner]
    # vertebra: cortical rim round a cancellous core, posterior (+y in LPS) on the midline
    radius = rng.uniform(0.07, 0.10) * min(extent[0], extent[1])
    spine_y = centre[1] + semi_y - fat - 1.3 * radius
    spine = np.sqrt((grid.x - centre[0]) ** 2 + (grid.y - spine_y) ** 2)
    image[spine < radius] = rng.uniform(550, 700)
    image[spine < radius - 2.0] = rng.uniform(300, 450)
    # aorta: in front of the spine, plain (40-60 HU) or contrast-enhanced (150-250 HU)
    aorta_radius = radius * rng.uniform(0.45, 0.6)
    aorta_hu = rng.uniform(40, 60) if rng.random() < 0.5 else rng.uniform(150, 250)
    aorta_x = centre[0] + rng.uniform(-0.5, 0.5) * radius
    aorta = np.sqrt((grid.x - aorta_x) ** 2 + (grid.y - (spine_y - radius - aorta_radius - 2.0)) ** 2)
    image[aorta < aorta_radius] = aorta_hu
    interior = inner & (spine >= radius + 1.0) & (aorta >= aorta_radius + 1.0)
    return image, interior


@dataclass
class _Organ:
    mask: np.ndarray
    hu: float
    centre: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray


def _organs(rng, grid: _Grid, image, interior, extent) -> list[_Organ]:
    """Paint one or two distractor organs, then one or two host organs; return the hosts."""
    in_plane = min(extent[0], extent[1])
    texture = _smooth_field(rng, grid.shape, (5, 8, 8))
    organs = []
    n_distractors, n_hosts = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    for number in range(n_distractors + n_hosts):
        host = number >= n_distractors
        scale = 1.0 if (host and n_hosts == 1) else 0.75
        semi_axes = np.array([
            rng.uniform(0.20, 0.28) * in_plane * scale,
            rng.uniform(0.16, 0.24) * in_plane * scale,
            rng.uniform(0.25, 0.40) * extent[2],
        ])
        rotation = Rotation.from_euler("z", rng.uniform(0, 180), degrees=True).as_matrix()
        centre = np.array([
            rng.uniform(-0.25, 0.25) * extent[0],
            rng.uniform(-0.22, 0.05) * extent[1],  # anterior half: -y is anterior in LPS
            rng.uniform(-0.15, 0.15) * extent[2],
        ])
        bumps = _smooth_field(rng, grid.shape, (4, 5, 5))
        mask = (_ellipsoid(grid, centre, semi_axes, rotation) + 0.08 * bumps < 1.0) & interior
        hu = rng.uniform(30, 70)
        image[mask] = (hu + 4.0 * texture)[mask]
        for earlier in organs:  # host organs do not share voxels: the later one is on top
            earlier.mask &= ~mask
        if host:
            organs.append(_Organ(mask, hu, centre, semi_axes, rotation))
    return organs


def _tumors(rng, grid: _Grid, image, label, hosts: list[_Organ]) -> None:
    """Place one to three irregular tumors inside the host organs (label 2)."""
    wanted = int(rng.integers(1, 4))
    placed: list[tuple[np.ndarray, float]] = []
    for attempt in range(40):
        if len(placed) == wanted:
            break
        organ = hosts[int(rng.integers(len(hosts)))]
        smallest = float(organ.semi_axes.min())
        max_diameter = float(np.clip(1.4 * smallest, 8.0, 35.0))
        diameter = float(rng.uniform(8.0, max_diameter))
        radius = diameter / 2
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        depth = max(0.0, 1.0 - (radius + 1.0) / smallest) * rng.uniform(0.0, 0.8) ** (1 / 3)
        centre = organ.centre + organ.rotation @ (organ.semi_axes * direction * depth)
        if any(np.linalg.norm(centre - c) < 1.5 * (radius + r) + 3.0 for c, r in placed):
            continue
        box = grid.index_box(centre, 1.9 * radius)
        if min(s.stop - s.start for s in box) < 2:
            continue
        tumor = _largest_component(_irregular_blob(rng, grid, box, centre, radius) & (label[box] == LABELS["organ"]))
        if tumor.sum() < MIN_TUMOR_VOXELS:
            continue
        contrast = rng.uniform(20, 50) * rng.choice([-1.0, 1.0])
        shading = 5.0 * _smooth_field(rng, tumor.shape, (3, 3, 3))
        image[box][tumor] = (organ.hu + contrast + shading)[tumor]
        label[box][tumor] = TUMOR_LABEL
        placed.append((centre, radius))
    if not placed:
        raise RuntimeError("phantom: no tumor could be placed (host organ too small for the grid)")


def _irregular_blob(rng, grid: _Grid, box, centre, radius: float) -> np.ndarray:
    """A lobulated blob: a rotated ellipsoid, two to four smaller ellipsoids on its surface,
    and a smooth random perturbation of the boundary."""
    shape = tuple(s.stop - s.start for s in box)
    rotation = Rotation.random(random_state=rng).as_matrix()
    semi_axes = radius * rng.uniform(0.8, 1.1, size=3)
    radius_field = _ellipsoid(grid, centre, semi_axes, rotation, box)
    for _ in range(int(rng.integers(2, 5))):
        offset = rng.standard_normal(3)
        offset *= rng.uniform(0.45, 0.8) * radius / np.linalg.norm(offset)
        lobe_axes = radius * rng.uniform(0.35, 0.65) * rng.uniform(0.8, 1.0, size=3)
        lobe_rotation = Rotation.random(random_state=rng).as_matrix()
        radius_field = np.minimum(radius_field, _ellipsoid(grid, centre + offset, lobe_axes, lobe_rotation, box))
    cells = tuple(max(2, min(4, n)) for n in shape)
    return radius_field + 0.15 * _smooth_field(rng, shape, cells) < 1.0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    return components == 1 + int(np.argmax(np.bincount(components.ravel())[1:]))


def case_id(design: str, index: int) -> str:
    """The id of case ``index`` of a dataset of ``design`` (its files' stem; the evaluation's
    seeded clicks are drawn per id)."""
    return f"{design}_{index:03d}"


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a dataset generated with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _synth_case(seed: int, subtle: bool = False) -> tuple[Volume, Volume]:
    case = synth.generate_synth_case(seed, subtle=subtle)
    return case.image, case.label


def _subtle_case(seed: int) -> tuple[Volume, Volume]:
    return _synth_case(seed, subtle=True)


def _chest_case(seed: int, complicated: bool = False) -> tuple[Volume, Volume]:
    image, label, _ = chest.generate_chest_case(seed, complicated=complicated)
    return image, label


def _complicated_chest_case(seed: int) -> tuple[Volume, Volume]:
    return _chest_case(seed, complicated=True)


@dataclass(frozen=True)
class Design:
    """A dataset design of `sam3d phantoms --design`: its case generator (seed -> image, label),
    labels, modality, description, dataset name and the module that generates it."""

    generate: Callable[[int], tuple[Volume, Volume]]
    labels: dict
    modality: str
    summary: str
    name: str
    module: str


DESIGNS = {
    "phantom": Design(generate_case, LABELS, "CT",
                      "Synthetic CT-like phantoms with small, irregular, low-contrast tumors",
                      "SAM3DPhantoms", "sam3d.data.phantoms"),
    "synth": Design(_synth_case, synth.LABELS, "CT or MR",
                    "Domain-randomised lesions in varied surroundings, CT-like and MRI-like (sam3d.data.synth)",
                    "SAM3DSynth", "sam3d.data.synth"),
    "subtle": Design(_subtle_case, synth.LABELS, "CT",
                     "Domain-randomised CT-like lesions 8-40 HU off their surroundings, beside air (sam3d.data.synth)",
                     "SAM3DSynthSubtle", "sam3d.data.synth"),
    "chest": Design(_chest_case, chest.LABELS, "CT",
                    "Chest CT phantoms with one lung tumour, a nodule or a mass against the wall (sam3d.data.chest)",
                    "SAM3DChest", "sam3d.data.chest"),
    "chest-complex": Design(_complicated_chest_case, chest.LABELS, "CT",
                            "Chest CT phantoms with one lung tumour and what real ones have: vessels into it, "
                            "spicules, necrosis or a cavity, atelectasis or effusion against it, kernel-shaped "
                            "noise, integer HU, padding outside the field of view (sam3d.data.chest)",
                            "SAM3DChestComplex", "sam3d.data.chest"),
}


def write_dataset(out_dir: str | os.PathLike, cases: int, seed: int, overwrite: bool = False, progress=None,
                  design: str = "phantom") -> Path:
    """Write ``cases`` cases of ``design`` ("phantom": these phantoms, "synth": domain-randomised
    lesions) to ``out_dir`` in the MSD / nnU-Net raw layout, with each case's clicks (clicksTr/)
    and a `sam3d batch` manifest of them (manifest.json); return ``out_dir``.
    ``progress(index)`` is called after each case."""
    if design not in DESIGNS:
        raise ValueError(f"unknown dataset design {design!r}; choose one of {', '.join(DESIGNS)}")
    chosen = DESIGNS[design]
    generate, labels_, modality = chosen.generate, chosen.labels, chosen.modality
    out_dir = Path(out_dir)
    if cases < 1:
        raise ValueError(f"the number of cases must be at least 1, got {cases}")
    if (out_dir / "dataset.json").exists() and not overwrite:
        raise ValueError(f"{out_dir} already holds a dataset (dataset.json); choose another folder or overwrite")
    images, labels, clicks = out_dir / "imagesTr", out_dir / "labelsTr", out_dir / "clicksTr"
    for folder in (images, labels, clicks):
        folder.mkdir(parents=True, exist_ok=True)
        for old in [*folder.glob(f"{design}_*{FILE_ENDING}"), *folder.glob(f"{design}_*{CLICKS_ENDING}")]:
            old.unlink()  # cases of an earlier, larger run
    training, manifest = [], []
    for index in range(cases):
        stem = case_id(design, index)
        image, label = generate(case_seed(seed, index))
        write_image(image, images / f"{stem}_0000{FILE_ENDING}")
        write_image(label, labels / f"{stem}{FILE_ENDING}")
        write_lesion_markups(clicks / f"{stem}{CLICKS_ENDING}", lesion_clicks(image, label, labels_["tumor"]))
        training.append({"image": f"./imagesTr/{stem}_0000{FILE_ENDING}", "label": f"./labelsTr/{stem}{FILE_ENDING}"})
        manifest.append({"id": stem, "image": f"imagesTr/{stem}_0000{FILE_ENDING}",
                         "prompts": f"clicksTr/{stem}{CLICKS_ENDING}", "reference": f"labelsTr/{stem}{FILE_ENDING}",
                         "reference_label": labels_["tumor"]})
        if progress:
            progress(index)
    description = {
        "name": chosen.name,
        "description": f"{chosen.summary} (sam3d phantoms --design {design}, seed {seed}).",
        "reference": chosen.module,
        "licence": "CC0",
        "tensorImageSize": "3D",
        "channel_names": {"0": modality},
        "modality": {"0": modality},
        "labels": dict(labels_),
        "numTraining": cases,
        "numTest": 0,
        "file_ending": FILE_ENDING,
        "training": training,
        "test": [],
        "seed": seed,
    }
    for name, document in ((MANIFEST_NAME, manifest), ("dataset.json", description)):  # dataset.json last
        temp = out_dir / f".{name}.tmp"
        temp.write_text(json.dumps(document, indent=2) + "\n")
        os.replace(temp, out_dir / name)
    return out_dir


def lesion_clicks(image: Volume, label: Volume, tumor_label: int) -> list[np.ndarray]:
    """One positive click per tumor (26-connected object of ``tumor_label``) at its most interior
    voxel, in RAS mm: what a user would click, for `sam3d batch`."""
    objects, count = label_objects(label.array == tumor_label)
    return [image.kji_to_ras([centre_click(objects == n, image.spacing)]) for n in range(1, count + 1)]
