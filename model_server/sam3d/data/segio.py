"""Slicer segmentation files (``.seg.nrrd``) with named, coloured, possibly overlapping segments.

Written and read with slicerio, the Slicer project's own reader / writer of the format; each
segment that overlaps an earlier one goes to a new layer, as Slicer stores them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicerio

from .io import Volume, atomic_write

SEG_ENDING = ".seg.nrrd"

# Distinct colours for lesion 1, 2, 3, ... (0..1 RGB), repeated when there are more lesions.
LESION_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.90, 0.16, 0.16),  # red
    (0.16, 0.63, 0.90),  # blue
    (0.98, 0.76, 0.12),  # yellow
    (0.20, 0.75, 0.30),  # green
    (0.70, 0.30, 0.85),  # purple
    (1.00, 0.50, 0.05),  # orange
    (0.10, 0.80, 0.80),  # cyan
    (0.95, 0.45, 0.70),  # pink
    (0.55, 0.35, 0.20),  # brown
    (0.60, 0.85, 0.10),  # lime
)


def lesion_color(index: int) -> tuple[float, float, float]:
    """Colour of lesion number ``index`` (1-based)."""
    return LESION_COLORS[(index - 1) % len(LESION_COLORS)]


@dataclass(eq=False)
class Segment:
    """One named segment: a boolean [k, j, i] mask, an RGB colour in 0..1 and, where it is not
    the segment's place in the file, its ID (``Segment_<n>``)."""

    name: str
    mask: np.ndarray
    color: tuple[float, float, float] = LESION_COLORS[0]
    segment_id: str | None = None


def write_segmentation(path: str | os.PathLike, segments: list[Segment], reference: Volume) -> Path:
    """Write ``segments`` to a ``.seg.nrrd`` on exactly the grid of ``reference``, atomically."""
    path = Path(path)
    if not path.name.lower().endswith(SEG_ENDING):
        raise ValueError(f"cannot write {path}: a Slicer segmentation file must end in {SEG_ENDING}")
    shape_ijk = reference.shape[::-1]
    segmentation = slicerio.create_segmentation(shape_ijk, reference.ijk_to_lps)
    segmentation["containedRepresentationNames"] = ["Binary labelmap"]
    segmentation["masterRepresentation"] = "Binary labelmap"
    for number, segment in enumerate(segments, start=1):
        mask = np.asarray(segment.mask)
        if mask.shape != reference.shape:
            raise ValueError(
                f"segment {segment.name!r}: mask shape {mask.shape} does not match the reference grid "
                f"{reference.shape}"
            )
        color = [float(c) for c in segment.color]
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise ValueError(f"segment {segment.name!r}: color must be 3 numbers in 0..1, got {segment.color}")
        added = slicerio.add_segment(
            segmentation,
            mask.astype(bool).transpose(2, 1, 0),  # slicerio's default index order is (i, j, k)
            {"id": segment.segment_id or f"Segment_{number}", "name": segment.name, "color": color},
        )
        # Full extent for every segment: some Slicer versions crop all segments of a layer to
        # the extent of the first one when they read the file.
        added["extent"] = [0, shape_ijk[0] - 1, 0, shape_ijk[1] - 1, 0, shape_ijk[2] - 1]
    atomic_write(path, SEG_ENDING, lambda tmp: _write_reproducibly(tmp, segmentation))
    return path


def _write_reproducibly(path: Path, segmentation: dict) -> None:
    """slicerio's writer, minus the '# on <time>' comment pynrrd puts in every header, so the
    same segments always give the same bytes (batch resume compares files)."""
    slicerio.write_segmentation(str(path), segmentation)
    content = Path(path).read_bytes()
    header_end = content.find(b"\n\n")
    header = b"\n".join(line for line in content[:header_end].split(b"\n") if not line.startswith(b"# on "))
    Path(path).write_bytes(header + content[header_end:])


def read_segmentation(path: str | os.PathLike) -> tuple[list[Segment], Volume]:
    """Read a ``.seg.nrrd``: its segments (kji masks) and its grid (an empty uint8 Volume)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cannot read {path}: no such file")
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as error:  # slicerio / pynrrd raise several types for a damaged file
        raise ValueError(f"cannot read {path}: not a Slicer .seg.nrrd file ({error})") from None
    voxels = segmentation["voxels"]
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=float)
    columns = ijk_to_lps[:3, :3]
    spacing_ijk = np.linalg.norm(columns, axis=0)
    grid = Volume(
        array=np.zeros(voxels.shape[-3:][::-1], dtype=np.uint8),
        spacing=tuple(spacing_ijk[::-1]),
        origin=tuple(ijk_to_lps[:3, 3]),
        direction=columns / spacing_ijk,
    )
    segments = [
        Segment(
            name=info.get("name", info.get("id", "")),
            mask=slicerio.segment_mask(segmentation, info).transpose(2, 1, 0),
            color=tuple(info.get("color", LESION_COLORS[0])),
            segment_id=info.get("id"),
        )
        for info in segmentation["segments"]
    ]
    return segments, grid
