"""Image IO with full geometry (spacing, origin, direction) through SimpleITK.

Reads NIfTI, NRRD, MHA and DICOM series; writes images and masks on exactly the grid they came
from. Arrays are in (k, j, i) order, as ``SimpleITK.GetArrayFromImage`` and Slicer's
``arrayFromVolume`` return them; spacing is given in the same order; origin and direction are in
LPS, as ITK stores them.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

# File endings `write_image` accepts: single-file formats that SimpleITK writes and that an
# atomic rename can publish in one step (".mhd" / ".nhdr" are left out: their data file travels separately).
WRITABLE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
_RAS_FROM_LPS = np.array([-1.0, -1.0, 1.0])


@dataclass(eq=False)  # numpy fields: compare grids with same_grid, arrays with numpy
class Volume:
    """A 3D array and the grid it lives on.

    ``array`` is indexed [k, j, i]; ``spacing`` is mm per array axis (k, j, i); ``origin`` is the
    LPS position (x, y, z) of voxel (0, 0, 0); ``direction`` is ITK's 3x3 matrix whose columns
    are the LPS directions of the i, j and k axes.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise ValueError(f"a Volume needs a 3D array, got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive numbers (k, j, i), got {self.spacing}")
        if len(self.origin) != 3:
            raise ValueError(f"origin must be 3 numbers (LPS x, y, z), got {self.origin}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix from a continuous (i, j, k) index to an LPS point in mm."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction * np.array(self.spacing[::-1])  # scales columns i, j, k
        matrix[:3, 3] = self.origin
        return matrix

    def same_grid(self, other: "Volume", tolerance: float = 1e-5) -> bool:
        """Whether ``other`` has the same shape, spacing, origin and direction."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tolerance)
            and np.allclose(self.origin, other.origin, atol=tolerance)
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new Volume on this grid holding ``array`` (same shape)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match the grid {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction.copy())

    def to_sitk(self) -> sitk.Image:
        array = self.array.astype(np.uint8) if self.array.dtype == bool else self.array
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing(self.spacing[::-1])
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction.flatten().tolist())
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(
                f"expected a 3D single-channel image, got {image.GetDimension()}D with "
                f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel"
            )
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=tuple(image.GetSpacing())[::-1],
            origin=tuple(image.GetOrigin()),
            direction=np.array(image.GetDirection()).reshape(3, 3),
        )

    # The affine below is the one ITK's TransformPhysicalPointToContinuousIndex and
    # TransformContinuousIndexToPhysicalPoint use (tests check it against them); written as one
    # matrix product so that many points convert at once.
    def lps_to_kji(self, points_lps: np.ndarray) -> np.ndarray:
        """LPS points [N, 3] (mm) -> continuous kji indices [N, 3]."""
        points = np.atleast_2d(np.asarray(points_lps, dtype=float))
        ijk = (np.linalg.inv(self.ijk_to_lps) @ np.c_[points, np.ones(len(points))].T)[:3].T
        return ijk[:, ::-1]

    def kji_to_lps(self, points_kji: np.ndarray) -> np.ndarray:
        """Continuous kji indices [N, 3] -> LPS points [N, 3] (mm)."""
        points = np.atleast_2d(np.asarray(points_kji, dtype=float))[:, ::-1]
        return (self.ijk_to_lps @ np.c_[points, np.ones(len(points))].T)[:3].T

    def ras_to_kji(self, points_ras: np.ndarray) -> np.ndarray:
        """RAS points [N, 3] (mm, Slicer's world frame) -> continuous kji indices [N, 3]."""
        return self.lps_to_kji(np.atleast_2d(np.asarray(points_ras, dtype=float)) * _RAS_FROM_LPS)

    def kji_to_ras(self, points_kji: np.ndarray) -> np.ndarray:
        """Continuous kji indices [N, 3] -> RAS points [N, 3] (mm)."""
        return self.kji_to_lps(points_kji) * _RAS_FROM_LPS


@dataclass(eq=False)
class DicomSeries:
    """An image series read from DICOM files: the volume and its files, ``files[k]`` being the
    instance that holds slice k of ``volume.array`` (what a DICOM SEG frame refers to)."""

    volume: Volume
    files: list[Path]
    series_uid: str


def read_image(path: str | os.PathLike) -> Volume:
    """Read a NIfTI / NRRD / MHA file, or the DICOM series in a folder, with its geometry.

    Raises ValueError that names the path and the problem (for DICOM: see ``read_dicom_series``).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"cannot read {path}: no such file or folder")
    if path.is_dir():
        return read_dicom_series(path).volume
    _refuse_non_image_dicom(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ValueError(
            f"cannot read {path}: not a NIfTI/NRRD/MHA/DICOM file SimpleITK can open "
            f"({_sitk_message(error)})"
        ) from None
    try:
        return Volume.from_sitk(image)
    except ValueError as error:
        hint = " (for DICOM, pass the folder holding the series)" if image.GetDimension() == 2 else ""
        raise ValueError(f"cannot read {path}: {error}{hint}") from None


def read_dicom_series(folder: str | os.PathLike) -> DicomSeries:
    """Read the one image series in ``folder`` (its DICOM files; other files are ignored).

    Slices are ordered by their position along the slice normal (row x column direction), not
    by file name or instance number. Raises ValueError for a folder with no image series, with
    several, with only non-image objects (SEG, RT structures, reports), and for a series with
    missing, duplicated, unevenly spaced or tilted slices.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"cannot read {folder}: not a folder of DICOM files")
    files = _series_files(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path, _ in files])
    try:
        volume = Volume.from_sitk(reader.Execute())
    except (RuntimeError, ValueError) as error:
        message = _sitk_message(error) if isinstance(error, RuntimeError) else str(error)
        raise ValueError(f"cannot read the DICOM series in {folder}: {message}") from None
    return DicomSeries(volume, [path for path, _ in files], str(files[0][1].SeriesInstanceUID))


def _series_files(folder: Path) -> list[tuple[Path, object]]:
    """The files of the folder's image series with their headers (pydicom), sorted along the
    slice normal; every check of ``read_dicom_series`` happens here or in ``_sorted_slices``."""
    headers = [(path, header) for path in sorted(p for p in folder.iterdir() if p.is_file())
               if (header := _dicom_header(path)) is not None]  # other files: not part of any series
    if not headers:
        raise ValueError(f"no DICOM series in {folder}: pass a folder of DICOM slices or an image file")
    images = [(path, header) for path, header in headers if _is_slice(header)]
    if not images:
        kinds = sorted({_sop_class_name(header) for _, header in headers})
        raise ValueError(f"{folder} holds no image series, only DICOM {', '.join(kinds)} object(s); "
                         "pass the folder of the image series (CT, MR, PT ...) itself")
    series: dict[str, list] = {}
    for path, header in images:
        series.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((path, header))
    if len(series) > 1:
        listed = "; ".join(f"{uid} ({members[0][1].get('Modality', '?')} "
                           f"'{members[0][1].get('SeriesDescription', '')}', {len(members)} files)"
                           for uid, members in series.items())
        raise ValueError(f"{folder} holds {len(series)} image series ({listed}); sam3d reads one series "
                         "per folder: put each series in a folder of its own")
    return _sorted_slices(folder, next(iter(series.values())))


def _sorted_slices(folder: Path, members: list) -> list:
    """The slices sorted along their normal; raises ValueError unless they form one straight,
    evenly spaced stack."""
    orientations = np.array([[float(v) for v in header.ImageOrientationPatient] for _, header in members])
    if not np.allclose(orientations, orientations[0], atol=1e-4):
        raise ValueError(f"the DICOM series in {folder} mixes slice orientations; export it again as one "
                         "stack of parallel slices")
    if len({(int(header.Rows), int(header.Columns)) for _, header in members}) > 1:
        raise ValueError(f"the DICOM series in {folder} mixes slice sizes; export it again as one stack")
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    positions = np.array([[float(v) for v in header.ImagePositionPatient] for _, header in members])
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    members, positions, depth = [members[n] for n in order], positions[order], depth[order]
    if len(members) == 1:
        return members
    gaps = np.diff(depth)
    name = [path.name for path, _ in members]
    if gaps.min() < 1e-3:
        n = int(np.argmin(gaps))
        raise ValueError(f"the DICOM series in {folder} has two slices at the same position ({name[n]}, "
                         f"{name[n + 1]}): several acquisitions, echoes or time points in one series; "
                         "put each in a folder of its own")
    step = float(np.median(gaps))
    uneven = np.abs(gaps - step) > max(0.01 * step, 1e-3)
    if uneven.any():
        n = int(np.argmax(uneven))
        missing = int(round(gaps[n] / step)) - 1
        what = f"{missing} slice(s) missing" if missing >= 1 else "unevenly spaced slices"
        raise ValueError(f"the DICOM series in {folder} is incomplete: {what} between {name[n]} and "
                         f"{name[n + 1]} (a {gaps[n]:.3g} mm gap where slices are {step:.3g} mm apart); "
                         "fetch or export the whole series again")
    in_plane = positions - np.outer(depth - depth[0], normal)
    if not np.allclose(in_plane, in_plane[0], atol=max(0.01 * step, 1e-3)):
        raise ValueError(f"the slices of the DICOM series in {folder} are not stacked along their normal "
                         "(gantry tilt?); resample the series onto a straight grid first")
    return members


def _dicom_header(path: Path):
    """The file's DICOM header (pydicom, no pixels), or None for a file that is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError, KeyError):
        return None


def _is_slice(header) -> bool:
    """A single-frame image placed in space: what a series of slices is made of."""
    needed = ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns", "PixelSpacing")
    return all(name in header for name in needed) and int(header.get("NumberOfFrames", 1) or 1) == 1


def _sop_class_name(header) -> str:
    uid = header.get("SOPClassUID") or header.file_meta.get("MediaStorageSOPClassUID", "")
    return getattr(uid, "name", "") or str(uid) or "unknown"


def _refuse_non_image_dicom(path: Path) -> None:
    """A DICOM file that is no image slice (a SEG, a report) gets a message saying what it is."""
    header = _dicom_header(path)
    if header is not None and not _is_slice(header):
        raise ValueError(f"cannot read {path}: it is a DICOM {_sop_class_name(header)} object, not an image; "
                         "pass the folder of the image series it belongs to (a DICOM SEG is read as a "
                         "reference or prior mask)")


def write_image(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``volume`` to a NIfTI / NRRD / MHA file, atomically (temp file + rename)."""
    path = Path(path)
    ending = _writable_ending(path)
    image = volume.to_sitk()
    atomic_write(path, ending, lambda tmp: sitk.WriteImage(image, str(tmp), compress))
    return path


def _writable_ending(path: Path) -> str:
    name = path.name.lower()
    for ending in WRITABLE_ENDINGS:
        if name.endswith(ending) and not name.endswith(".seg.nrrd"):
            return ending
    raise ValueError(
        f"cannot write {path}: unsupported file ending; use one of {', '.join(WRITABLE_ENDINGS)}"
        " (segmentations with named segments: sam3d.data.segio.write_segmentation)"
    )


def atomic_write(path: Path, ending: str, write: Callable[[Path], object]) -> None:
    """Call ``write(temp_path)`` on a temp file beside ``path`` (same ending), then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name that the writer creates itself, so the file gets the usual permissions.
    temp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{ending}"
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (a checkpoint, LiteMedSAM's weights, a batch's outputs)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _sitk_message(error: Exception) -> str:
    """The line of a SimpleITK exception that says what went wrong (its last one)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
