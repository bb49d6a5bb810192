"""`sam3d segment`: clicks and a box in RAS millimetres (as Slicer shows them) -> a Slicer ``.seg.nrrd``
(or a DICOM SEG, ``--out OUT.dcm``, for a DICOM series).

Runs the engine in this process, or on a running ``sam3d serve`` when ``--server`` is given
(through the torch-free client), with the segmenters of ``sam3d batch``. The output lies on
exactly the input image's grid.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..batch.options import add_segmenter_options, check_segmenter_options
from ..errors import CLIError

POINT_HELP = ("a click as R,A,S in mm, optionally followed by :+ (positive, the default) or :- "
              "(negative); repeat for more clicks")
BOX_HELP = ("a box prompt: two opposite corners R1,A1,S1:R2,A2,S2 in mm (RAS), for models with a box "
            "prompt; corners on one slice make a 2D box on that slice")


def register(subparsers) -> None:
    parser = subparsers.add_parser("segment", help="segment one image from clicks in RAS mm",
                                   description=__doc__)
    parser.add_argument("image", help="NIfTI / NRRD / MHA file or DICOM folder")
    parser.add_argument("--point", action="append", default=[], metavar="R,A,S[:+|-]", help=POINT_HELP)
    parser.add_argument("--points", action="append", default=[], metavar="FILE.mrk.json",
                        help="Slicer markups file(s); points in lists named '...negative' or ending "
                             "in '-' (or described 'negative') are negative clicks")
    parser.add_argument("--box", action="append", default=None, metavar="R1,A1,S1:R2,A2,S2", help=BOX_HELP)
    parser.add_argument("--out", required=True,
                        help="output .seg.nrrd, or .dcm: a DICOM SEG (the image must be a DICOM series folder)")
    parser.add_argument("--name", default="Tumor", help="segment name (default Tumor)")
    add_segmenter_options(parser, timeout=120.0)
    parser.set_defaults(func=run)


def parse_point(text: str) -> tuple[np.ndarray, int]:
    """'R,A,S' / 'R,A,S:+' / 'R,A,S:-' -> (RAS point, label 1 | 0)."""
    coordinates, _, sign = text.strip().partition(":")
    if sign not in ("", "+", "-"):
        raise CLIError(f"--point {text!r}: the label after ':' must be + or -")
    try:
        point = np.array([float(v) for v in coordinates.split(",")])
    except ValueError:
        point = np.zeros(0)
    if point.shape != (3,) or not np.isfinite(point).all():
        raise CLIError(f"--point {text!r} is not R,A,S (three numbers in mm, e.g. --point -12.5,30,4:+)")
    return point, 0 if sign == "-" else 1


def parse_box(text: str) -> np.ndarray:
    """'R1,A1,S1:R2,A2,S2' -> two RAS corners [2, 3]."""
    from ..batch.prompts import ras_box

    corners = ras_box(corner.split(",") for corner in text.strip().split(":"))
    if corners is None:
        raise CLIError(f"--box {text!r} is not R1,A1,S1:R2,A2,S2 (two opposite corners in mm, six finite "
                       "numbers, e.g. --box -20,10,5:15,40,5)")
    return corners


def collect_points(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """All clicks of --point and --points as (RAS [N, 3], labels [N]); none is fine with --box."""
    from ..data.markups import MarkupsError, read_markups

    points, labels = [], []
    for text in args.point:
        point, label = parse_point(text)
        points.append(point[None])
        labels.append([label])
    for path in args.points:
        try:
            file_points, file_labels = read_markups(path)
        except MarkupsError as error:
            raise CLIError(str(error)) from None
        points.append(file_points)
        labels.append(file_labels)
    if not points:
        if args.box is not None:
            return np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
        raise CLIError("give at least one click: --point R,A,S or --points FILE.mrk.json (or a --box)")
    points, labels = np.concatenate(points), np.concatenate(labels).astype(np.int64)
    if not (labels == 1).any() and args.box is None:
        raise CLIError("all clicks are negative; give at least one positive click on the object")
    return points, labels


def run(args: argparse.Namespace) -> int:
    from ..batch.prompts import Lesion, check_inside
    from ..batch.segmenters import LocalSegmenter, SegmenterError, ServerSegmenter
    from ..data.dicom_seg import DicomSegError, write_dicom_seg
    from ..data.io import read_dicom_series, read_image
    from ..data.segio import SEG_ENDING, Segment, write_segmentation

    check_segmenter_options(args)
    dicom_out = args.out.lower().endswith(".dcm")
    if not (dicom_out or args.out.lower().endswith(SEG_ENDING)):
        raise CLIError(f"--out {args.out!r} must end in {SEG_ENDING} (a Slicer segmentation) or .dcm (a DICOM SEG)")
    if dicom_out and not Path(args.image).is_dir():
        raise CLIError(f"--out {args.out}: a DICOM SEG refers to the slices of a DICOM series; give the series' "
                       f"folder as the image, or write a {SEG_ENDING}")
    if args.box is not None and len(args.box) > 1:
        raise CLIError(f"--box was given {len(args.box)} times; a lesion has one box (segment another lesion "
                       "with its own command)")
    box_ras = None if args.box is None else parse_box(args.box[0])
    points_ras, labels = collect_points(args)
    lesion = Lesion(1, points_ras, labels, box_ras)
    try:
        series = read_dicom_series(args.image) if dicom_out else None
        volume = series.volume if dicom_out else read_image(args.image)
        check_inside(volume, [lesion], args.image)
        if args.server:
            segmenter = ServerSegmenter.connect(args.server, api_key=args.api_key, timeout=args.timeout)
        else:
            segmenter = LocalSegmenter.load(args.model, device=args.device, sam_checkpoint=args.sam_checkpoint,
                                            click_pathway=args.click_pathway,
                                            slice_precision=args.slice_precision)
        [mask] = segmenter.segment(volume, [lesion])
    except (ValueError, SegmenterError) as error:
        raise CLIError(str(error)) from None
    if dicom_out:
        try:
            write_dicom_seg(args.out, [Segment(args.name, mask)], series, segmenter.name, automatic=False,
                            checkpoint_sha256=segmenter.checkpoint_sha256)
        except DicomSegError as error:
            raise CLIError(str(error)) from None
    else:
        write_segmentation(args.out, [Segment(args.name, mask)], volume)
    prompts = f"{len(labels)} click(s)" + ("" if box_ras is None else " and a box")
    print(f"sam3d segment: {int(mask.sum())} voxels ({mask.sum() * volume.voxel_volume_ml:.2f} ml) "
          f"from {prompts} -> {args.out}")
    return 0
