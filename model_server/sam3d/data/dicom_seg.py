"""DICOM Segmentation objects (DICOM SEG), written and read with highdicom.

A SEG written here holds one binary segment per lesion (its label, its colour, the SNOMED CT
category "Morphologically abnormal structure" and type "Neoplasm", and the algorithm that made
it: the model's name, this package's version, SEMIAUTOMATIC for clicks a person placed,
AUTOMATIC for clicks the program derived), with one frame per source slice that holds lesion
voxels, each frame referencing the source instance it lies on. Read back, a SEG gives the same
``Segment`` list and grid as a ``.seg.nrrd`` (``sam3d.data.segio``), so it serves as a reference
or prior mask too.

Needs the ``dicom`` extra: ``pip install 'sam3dprompt-server[dicom]'``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io import DicomSeries, Volume, atomic_write
from .segio import LESION_COLORS, Segment

SEG_DCM_ENDING = ".seg.dcm"  # what `sam3d batch` names its SEG files; any .dcm is accepted
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
MANUFACTURER = "SAM3DPrompt"
SERIES_NUMBER = 3001
_POSITION_TOLERANCE_MM = 1e-3


class DicomSegError(ValueError):
    """A SEG cannot be written or read; the message says why and what to do."""


def _highdicom():
    try:
        import highdicom
    except ImportError as error:
        raise DicomSegError(f"DICOM SEG needs highdicom, which is not installed ({error}): "
                            "pip install 'sam3dprompt-server[dicom]'") from None
    return highdicom


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file holding a Segmentation (SOP class) object."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        return False
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError):
        return False
    return str(header.get("SOPClassUID", "")) == SEGMENTATION_STORAGE


def encode_dicom_seg(segments: list[Segment], series: DicomSeries, model_name: str, automatic: bool,
                     checkpoint_sha256: str = "") -> bytes:
    """The bytes of a DICOM SEG file holding ``segments`` (masks on ``series.volume``'s grid),
    referencing the series' instances. ``automatic``: the clicks were not placed by a person.
    ``checkpoint_sha256`` (the model checkpoint's, where known) goes into the algorithm's parameters:
    the name and the software version alone do not say which trained weights made the masks."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.sr.codedict import codes

    from .. import __version__

    hd = _highdicom()
    volume = series.volume
    if not segments:
        raise DicomSegError("a DICOM SEG needs at least one segment")
    for segment in segments:
        if np.asarray(segment.mask).shape != volume.shape:
            raise DicomSegError(f"segment {segment.name!r}: mask shape {np.asarray(segment.mask).shape} does not "
                                f"match the series grid {volume.shape}")
    sources = [pydicom.dcmread(path) for path in series.files]
    _check_frames(sources, volume)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name, version=__version__, family=codes.cid7162.ArtificialIntelligence,
        parameters={"checkpoint_sha256": checkpoint_sha256} if checkpoint_sha256 else None)
    kind = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if automatic else hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=segment.name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm, algorithm_type=kind,
            algorithm_identification=algorithm, tracking_uid=hd.UID(), tracking_id=segment.name,
            display_color=hd.color.CIELabColor.from_rgb(*[int(round(255 * c)) for c in segment.color]))
        for number, segment in enumerate(segments, start=1)
    ]
    labels = np.stack([np.asarray(segment.mask, dtype=bool) for segment in segments], axis=-1)  # [k, row, col, s]
    if not labels.any():
        labels[0, 0, 0, 0] = False  # an all-empty SEG still needs a frame: keep every frame below
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=labels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=model_name, software_versions=__version__,
        device_serial_number="1", series_description=f"SAM3D {model_name}", content_label="SAM3D",
        content_description=f"lesions segmented from clicks by {model_name}",
        omit_empty_frames=bool(labels.any()))
    stream = DicomBytesIO()
    seg.save_as(stream, enforce_file_format=True)
    return stream.getvalue()


def _check_frames(sources: list, volume: Volume) -> None:
    """The series' slice k must be the file the SEG's frame k references (position and size)."""
    corners = volume.kji_to_lps(np.c_[np.arange(volume.shape[0]), np.zeros((volume.shape[0], 2))])
    for k, (source, corner) in enumerate(zip(sources, corners)):
        position = np.array([float(v) for v in source.ImagePositionPatient])
        if (int(source.Rows), int(source.Columns)) != volume.shape[1:] or \
                not np.allclose(position, corner, atol=_POSITION_TOLERANCE_MM):
            raise DicomSegError(f"slice {k} of the volume does not lie on its DICOM file {source.filename}; "
                                "read the series with sam3d.data.io.read_dicom_series")


def write_dicom_seg(path: str | os.PathLike, segments: list[Segment], series: DicomSeries, model_name: str,
                    automatic: bool, checkpoint_sha256: str = "") -> Path:
    """Write ``encode_dicom_seg``'s file to ``path`` (a ``.dcm``), atomically."""
    path = Path(path)
    if path.suffix.lower() != ".dcm":
        raise DicomSegError(f"cannot write {path}: a DICOM SEG file must end in .dcm")
    data = encode_dicom_seg(segments, series, model_name, automatic, checkpoint_sha256)
    atomic_write(path, ".dcm", lambda temp: temp.write_bytes(data))
    return path


def read_dicom_seg(path: str | os.PathLike) -> tuple[list[Segment], Volume]:
    """A DICOM SEG's segments (boolean kji masks) and their grid (an empty uint8 Volume): the
    frames' stack, empty slices between them filled in."""
    hd = _highdicom()
    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as error:  # pydicom / highdicom raise several types for a file that is no SEG
        raise DicomSegError(f"cannot read {path}: not a DICOM SEG file highdicom can open ({error})") from None
    try:
        stack = seg.get_volume(combine_segments=False, dtype=np.uint8)
    except (ValueError, RuntimeError) as error:
        raise DicomSegError(f"cannot read {path}: its frames do not form one stack of parallel slices "
                            f"({error})") from None
    affine = np.asarray(stack.affine, dtype=float)  # (slice, row, column) index -> LPS
    columns = affine[:3, [2, 1, 0]]  # the directions of i (column), j (row) and k (slice)
    steps = np.linalg.norm(columns, axis=0)
    array = np.asarray(stack.array)
    grid = Volume(np.zeros(array.shape[:3], dtype=np.uint8), spacing=tuple(steps[::-1]),
                  origin=tuple(affine[:3, 3]), direction=columns / steps)
    segments = []
    for index, number in enumerate(stack.get_channel_values(stack.channel_descriptors[0])):
        description = seg.get_segment_description(int(number))
        color = LESION_COLORS[(int(number) - 1) % len(LESION_COLORS)]
        lab = description.get("RecommendedDisplayCIELabValue")
        if lab is not None:
            color = tuple(c / 255 for c in hd.color.CIELabColor.from_dicom_value(lab).to_rgb())
        segments.append(Segment(str(description.segment_label), array[..., index].astype(bool), color))
    return segments, grid


def is_segmentation_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds named segments: a Slicer ``.seg.nrrd`` or a DICOM SEG."""
    from .segio import SEG_ENDING

    return Path(path).name.lower().endswith(SEG_ENDING) or is_dicom_seg(path)


def read_segments(path: str | os.PathLike) -> tuple[list[Segment], Volume]:
    """The segments and grid of a ``.seg.nrrd`` or a DICOM SEG (``is_segmentation_file``)."""
    from .segio import SEG_ENDING, read_segmentation

    if Path(path).name.lower().endswith(SEG_ENDING):
        return read_segmentation(path)
    return read_dicom_seg(path)
