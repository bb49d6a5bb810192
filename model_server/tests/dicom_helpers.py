"""DICOM series for the tests. ``write_ct_series``: as a CT scanner writes them, one CT Image
Storage file per slice with the patient / study / series / equipment modules, stored as unsigned
values with a rescale intercept of -1024, instance numbers running head to feet, files named by
their SOP instance UID (so the folder's name order says nothing about the slice order).
``write_dicom_series``: a plain series from SimpleITK's writer, of any grid (IO round trips)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from sam3d.data.io import Volume
from sam3d.data.resample import resample_to_reference

SHAPE = (40, 64, 64)  # k, j, i: 40 slices of 64 x 64


def phantom_ct(direction: np.ndarray | None = None, origin=(-180.0, -160.0, 95.0)) -> tuple[Volume, tuple]:
    """A small CT-like volume (HU): body, a bone, a tumor of +60 HU at an off-centre voxel."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    rng = np.random.default_rng(7)
    array = np.full(SHAPE, -1000.0)
    array[((j - 32) / 28.0) ** 2 + ((i - 32) / 24.0) ** 2 < 1] = 40.0  # body
    array[((j - 44) / 5.0) ** 2 + ((i - 32) / 6.0) ** 2 < 1] = 700.0  # spine
    tumor_kji = (14, 22, 40)
    tumor = ((k - tumor_kji[0]) * 2.5) ** 2 + ((j - tumor_kji[1]) * 0.8) ** 2 + ((i - tumor_kji[2]) * 0.8) ** 2 < 36
    array[tumor] = 110.0
    array = np.clip(array + rng.normal(0, 8, SHAPE), -1024, 3000)
    volume = Volume(np.round(array).astype(np.int16), spacing=(2.5, 0.8, 0.8), origin=origin,
                    direction=np.eye(3) if direction is None else direction)
    return volume, tumor_kji


def oblique_direction(degrees: float = 15.0) -> np.ndarray:
    """A right-handed direction tilted about the LPS x axis (a tilted head / oblique MR-like stack)."""
    angle = np.deg2rad(degrees)
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    return tilt @ np.diag([1.0, 1.0, 1.0])


def write_ct_series(volume: Volume, folder: Path, description: str = "CT phantom", patient_id: str = "PHANTOM1",
                    study_uid: str | None = None, drop: tuple[int, ...] = ()) -> list[Path]:
    """``volume`` (HU, right-handed direction) as a CT series in ``folder``; slices in ``drop`` left out."""
    folder.mkdir(parents=True, exist_ok=True)
    direction = volume.direction
    assert np.linalg.det(direction) > 0, "DICOM stacks run along row x column"
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    stored = (volume.array.astype(np.int32) + 1024).clip(0, 4095).astype(np.uint16)
    files = []
    for k in range(volume.shape[0]):
        if k in drop:
            continue
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", patient_id, "19600101", "O"
        ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = study_uid, "1", "20240105", "101500"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyDescription = "ACC1", "", "CT chest"
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, 2, description
        ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "CT", "Phantom Scanners", "PS-64"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = volume.shape[0] - k  # head to feet: numbers run against the positions
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1])]
        position = volume.kji_to_lps([[k, 0, 0]])[0]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.SliceLocation = f"{position @ np.cross(direction[:, 0], direction[:, 1]):.6f}"
        ds.PixelSpacing = [f"{volume.spacing[1]:g}", f"{volume.spacing[2]:g}"]
        ds.SliceThickness = f"{volume.spacing[0]:g}"
        ds.KVP, ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "120", "-1024", "1", "HU"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = stored[k].tobytes()
        path = folder / f"{sop_uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def write_dicom_series(volume: Volume, folder: Path, series_description: str = "") -> list[Path]:
    """Write ``volume`` as a CT DICOM series (one file per k slice) into ``folder``.

    DICOM stores the slice normal as row x column, so a volume whose direction matrix is
    left-handed reads back with its k axis reversed: same voxels at the same LPS positions.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    array = volume.array
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError("write_dicom_series needs an integer array (e.g. int16 HU)")
    image = volume.with_array(array.astype(np.int16)).to_sitk()
    uid_root = "1.2.826.0.1.3680043.2.1125." + time.strftime("%Y%m%d%H%M%S")
    direction = volume.direction
    orientation = "\\".join(f"{v:.10g}" for v in (*direction[:, 0], *direction[:, 1]))
    shared_tags = {
        "0008|0060": "CT",
        "0008|0008": "DERIVED\\SECONDARY",
        "0020|000d": uid_root + ".1",
        "0020|000e": uid_root + ".2",
        "0020|0052": uid_root + ".3",
        "0020|0037": orientation,
        "0008|103e": series_description,
        "0018|0050": f"{volume.spacing[0]:.10g}",
        "0028|1052": "0",  # rescale intercept
        "0028|1053": "1",  # rescale slope
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    written = []
    for k in range(volume.shape[0]):
        slice_image = image[:, :, k]
        for tag, value in shared_tags.items():
            slice_image.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
        slice_image.SetMetaData("0020|0013", str(k + 1))
        slice_image.SetMetaData("0008|0018", f"{uid_root}.4.{k + 1}")
        target = folder / f"slice_{k:04d}.dcm"
        writer.SetFileName(str(target))
        writer.Execute(slice_image)
        written.append(target)
    return written


def on_grid(masks_grid: Volume, mask: np.ndarray, image: Volume) -> np.ndarray:
    """A mask read from a SEG (on the stack of its frames) on the image's grid."""
    moved = resample_to_reference(masks_grid.with_array(mask.astype(np.uint8)), image, interpolator="nearest",
                                  default_value=0)
    return moved.array.astype(bool)


def frame_references(seg) -> list[tuple[np.ndarray, str]]:
    """(frame position LPS, referenced SOP instance UID) of every frame of a SEG dataset."""
    frames = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        position = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        frames.append((position, str(source.ReferencedSOPInstanceUID)))
    return frames


def assert_frames_reference_their_slices(seg, series_folder: Path) -> None:
    by_position = {}
    for path in series_folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_position[tuple(np.round([float(v) for v in ds.ImagePositionPatient], 3))] = str(ds.SOPInstanceUID)
    frames = frame_references(seg)
    assert frames
    for position, uid in frames:
        assert by_position[tuple(np.round(position, 3))] == uid
