"""`sam3d batch`: segment every case of a manifest from its saved clicks, in one run.

Writes DIR/<id>.seg.nrrd per case (one named, coloured segment per lesion, on the input grid;
or a DICOM SEG, DIR/<id>.seg.dcm: --output-format), DIR/summary.csv and DIR/batch.log. Images
may be series on a DICOMweb server (PACS): manifest rows with image dicomweb:STUDY/SERIES, or
every series a --query finds; --store sends each DICOM SEG back. With --ray the cases run on the workers of a Ray cluster
(each loads the model once) and this process writes the outputs. Exit status: 0 when every case run is done, 1 when a case
failed (see summary.csv), 2 for a user error (bad manifest or options). The manifest format:
docs/BATCH.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import CLIError
from .manifest import ManifestError, cases_from_series, read_manifest
from .options import add_segmenter_options, check_segmenter_options
from ..evaluate.metrics import NSD_TOLERANCE_MM
from .runner import OUTPUT_FORMATS, BatchError, BatchOptions, BatchReport, check_images, check_prompt_sources, run_batch
from .state import DONE, FAILED, PENDING, OutputFolder

TABLE_ROWS = 20
COMPILE_MIN_CASES = 20  # --compile's default: on from this many cases in this process (compile_wanted)
TABLE_COLUMNS = ("id", "status", "lesions", "points", "voxels", "volume_ml", "dice", "nsd", "seconds")


def register(subparsers) -> None:
    parser = subparsers.add_parser("batch", help="segment many cases from saved clicks (a manifest)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", nargs="?", default=None,
                        help="JSON or CSV file listing the cases (id, image, prompts, reference); "
                             "leave it out with --query")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_segmenter_options(parser, timeout=300.0)
    parser.add_argument("--resume", action="store_true",
                        help="skip the cases a previous run into DIR finished (same inputs, output intact)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="run at most N cases now (finish the rest later with --resume)")
    parser.add_argument("--propagate-from", default=None, metavar="CASE",
                        help="give every case without prompts the clicks of case CASE, mapped onto its "
                             "image by registration (follow-up scans of one patient)")
    parser.add_argument("--prompts-from-mask", nargs="?", const="prior_mask", default=None, metavar="COLUMN",
                        help="cases with a prior mask (column prior_mask, or COLUMN) get one lesion per "
                             "connected component of it, clicked at its most interior voxel")
    parser.add_argument("--nsd-tolerance", type=float, default=NSD_TOLERANCE_MM, metavar="MM",
                        help=f"surface distance tolerance of NSD (default {NSD_TOLERANCE_MM:g} mm)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="compile the in-process lite model's frozen TinyViT for this CPU first (torch.compile; "
                             "needs a C++ compiler): each crop encodes about 1.4x faster, for 10-15 s once (1-2 "
                             "minutes on a machine's first compile). Default: on when the manifest holds at least "
                             f"{COMPILE_MIN_CASES} cases (with --ray: only when given, for each worker). No effect on "
                             "other models or on a GPU; not with --server (a server compiles as it was started)")
    parser.add_argument("--output-format", default="seg.nrrd", choices=tuple(OUTPUT_FORMATS),
                        help="seg.nrrd (Slicer segmentation), dicom-seg (DICOM SEG, <id>.seg.dcm; needs DICOM "
                             "images) or both (default seg.nrrd)")
    pacs = parser.add_argument_group("DICOMweb server / PACS (pip install 'sam3dprompt-server[dicom]'; docs/DICOM.md)")
    pacs.add_argument("--dicomweb", default=None, metavar="URL",
                      help="DICOMweb root of the PACS (Orthanc: http://HOST:8042/dicom-web; basic auth: "
                           "http://USER:PASSWORD@HOST...) for dicomweb:STUDY_UID/SERIES_UID images")
    pacs.add_argument("--dicomweb-token", default=os.environ.get("SAM3D_DICOMWEB_TOKEN"), metavar="TOKEN",
                      help="bearer token for the DICOMweb server (default: $SAM3D_DICOMWEB_TOKEN)")
    pacs.add_argument("--query", default=None, metavar="QIDO",
                      help="segment every image series the server finds, e.g. 'Modality=CT&StudyDate=20240101-"
                           "20240131' (instead of a manifest; clicks from --prompts-folder, --prompts-from-mask "
                           "or --propagate-from)")
    pacs.add_argument("--prompts-folder", default=None, metavar="DIR",
                      help="with --query: DIR/<series UID>.mrk.json holds a series' clicks, DIR/<series UID>"
                           ".seg.nrrd (.seg.dcm, .nii.gz, .nrrd) its prior mask")
    pacs.add_argument("--store", action="store_true",
                      help="send each case's DICOM SEG to the DICOMweb server (STOW-RS)")
    cluster = parser.add_argument_group("on a Ray cluster (pip install 'sam3dprompt-server[ray]'; docs/BATCH.md)")
    cluster.add_argument("--ray", default=None, metavar="ADDRESS",
                         help="run the cases on Ray workers: 'local' (a Ray runtime on this machine), 'auto' "
                              "(the running cluster) or 'ray://HOST:PORT'; outputs are written here")
    cluster.add_argument("--workers", type=int, default=None, metavar="N",
                         help="Ray workers, each with its own model (default: as many as the cluster holds)")
    cluster.add_argument("--cpus-per-worker", type=float, default=None, metavar="C",
                         help="CPUs Ray reserves for each worker (its torch threads; default 1)")
    cluster.add_argument("--gpus-per-worker", type=float, default=None, metavar="F",
                         help="GPUs for each worker; a fraction shares one (0.25: four workers per GPU; default 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit {args.limit}: give at least 1 case")
    if args.nsd_tolerance <= 0:
        raise CLIError("--nsd-tolerance must be a positive distance in mm")
    out = OutputFolder(Path(args.out))
    if out.root.exists() and not out.root.is_dir():
        raise CLIError(f"--out {out.root} is a file; give a folder for the outputs")
    server = _dicomweb(args)
    options = BatchOptions(resume=args.resume, limit=args.limit, propagate_from=args.propagate_from,
                           prompts_from_mask=args.prompts_from_mask is not None,
                           nsd_tolerance_mm=args.nsd_tolerance, progress=not args.quiet,
                           output_format=args.output_format, dicomweb=server, store=args.store)
    source = f"manifest {args.manifest}" if args.manifest else f"--query {args.query!r}"
    try:
        cases = _cases(args, server)
        check_images(cases, options)
        check_prompt_sources(cases, options)
    except ManifestError as error:
        raise CLIError(f"{source}: {error}") from None
    check_segmenter_options(args)
    if args.server and args.compile:
        raise CLIError("--compile goes with the in-process model; a server compiles its encoder as it was started "
                       "(sam3d serve --compile, the default)")
    runner = _ray_runner(args)
    if args.server:
        make_segmenter, identity = _server(args)
    else:
        make_segmenter, identity = _local(args, compile_wanted(args.compile, len(cases), args.ray is not None))
    try:
        report = run_batch(cases, out, make_segmenter, identity, options, runner)
    except BatchError as error:
        raise CLIError(str(error)) from None
    except KeyboardInterrupt:
        print(f"\nsam3d batch: interrupted; the finished cases are kept in {out.root} (summary.csv "
              "is up to date): run the same command with --resume to finish", file=sys.stderr)
        return 130
    print_report(report, out)
    return 1 if report.failed else 0


def _dicomweb(args: argparse.Namespace):
    """The DICOMweb server of --dicomweb, after the checks of the options that need one."""
    if (args.manifest is None) == (args.query is None):
        raise CLIError("give a manifest file, or --query with --dicomweb (every series the server finds), not both")
    if args.store and args.output_format == "seg.nrrd":
        raise CLIError("--store sends DICOM SEG objects: add --output-format dicom-seg (or both)")
    if args.prompts_folder and args.query is None:
        raise CLIError("--prompts-folder goes with --query (a manifest names each case's prompts itself)")
    needs = [name for name, given in (("--query", args.query is not None), ("--store", args.store)) if given]
    if args.dicomweb is None:
        if needs:
            raise CLIError(f"{', '.join(needs)} need(s) the DICOMweb server: --dicomweb URL")
        return None
    try:
        from ..data.dicomweb import DicomWebServer

        server = DicomWebServer(args.dicomweb, args.dicomweb_token)
        server.client()  # checks the URL and that dicomweb-client is installed
    except ImportError as error:
        raise CLIError(f"--dicomweb needs dicomweb-client, which is not installed ({error}): pip install "
                       "'sam3dprompt-server[dicom]'") from None
    except ValueError as error:
        raise CLIError(str(error)) from None
    return server


def _cases(args: argparse.Namespace, server) -> list:
    """The cases of the manifest, or one per series that --query finds."""
    if args.manifest is not None:
        return read_manifest(args.manifest, prior_mask_field=args.prompts_from_mask or "prior_mask")
    from ..data.dicomweb import DicomWebError, query_series

    folder = Path(args.prompts_folder) if args.prompts_folder else None
    if folder is not None and not folder.is_dir():
        raise CLIError(f"--prompts-folder {folder} is not a folder")
    try:
        found = query_series(server, args.query)
    except DicomWebError as error:
        raise CLIError(str(error)) from None
    if not found:
        raise CLIError(f"--query {args.query!r}: the DICOMweb server {server} has no image series that match")
    print(f"sam3d batch: {len(found)} series from {server}: " + "; ".join(
        f"{ref.series_uid} ({description})" for ref, description in found[:5]) + (" ..." if len(found) > 5 else ""))
    return cases_from_series([ref for ref, _ in found], folder)


def _ray_runner(args: argparse.Namespace):
    """The Ray runner for --ray (Ray is imported only then), or None: in this process."""
    given = [f"--{name.replace('_', '-')}" for name in ("workers", "cpus_per_worker", "gpus_per_worker")
             if getattr(args, name) is not None]
    if args.ray is None:
        if given:
            raise CLIError(f"{', '.join(given)} go(es) with --ray ADDRESS (run on a Ray cluster)")
        return None
    if args.server:
        raise CLIError("--ray and --server exclude each other: Ray workers load the model themselves")
    gpus = args.gpus_per_worker or 0.0
    if gpus and args.device == "cpu":
        raise CLIError(f"--gpus-per-worker {gpus:g} with --device cpu: drop one of them")
    if not gpus and args.device == "cuda":
        raise CLIError("--device cuda with --ray: give --gpus-per-worker (e.g. 1, or 0.25 for four workers "
                       "per GPU) so that Ray gives each worker a GPU")
    try:
        from .cluster import RayError, RayOptions, RayRunner
    except ImportError as error:
        raise CLIError(f"--ray needs Ray, which is not installed ({error}): pip install "
                       "'sam3dprompt-server[ray]'") from None
    try:
        return RayRunner(RayOptions(args.ray, args.workers, args.cpus_per_worker or 1.0, gpus))
    except RayError as error:
        raise CLIError(str(error)) from None


def compile_wanted(option: bool | None, cases: int, on_ray: bool) -> bool:
    """--compile / --no-compile, or by default: compile when this process runs at least
    COMPILE_MIN_CASES cases. A compile costs 10-15 s with torch's cache warm (90 s cold) and is
    paid back after about five phantom cases on the 2-core test machine (docs/BENCHMARKS.md).
    The manifest's size stands for the cases to run, so a run and its --resume decide alike.
    Ray workers compile only when asked: how many cases each gets is not known here."""
    if option is not None:
        return option
    return not on_ray and cases >= COMPILE_MIN_CASES


def local_identity(args: argparse.Namespace, spec: str) -> str:
    """What decides the answers of the model ``spec`` in this process or on Ray workers, for
    --resume: the checkpoint's bytes (their SHA-256), the device kind (a GPU's arithmetic is not a
    CPU's), the 2D pathway's precision as resolved there ("auto" is bf16 on one CPU and fp32 on
    another) and who answers first clicks. A run resumed on another kind of machine therefore runs
    its cases again rather than mixing two answers. Ray workers answer on a GPU each where
    --gpus-per-worker gives one, else on their CPUs, whose "auto" precision is theirs to resolve:
    there "auto" is what is recorded."""
    from ..data.io import file_sha256
    from ..engine.slice_pathway import resolve_slice_precision
    from ..model.checkpoint import model_path, resolve_device

    if args.ray is not None:
        device = "cuda" if args.gpus_per_worker else "cpu"
    else:
        try:
            device = resolve_device(args.device).type
        except ValueError as error:
            raise CLIError(str(error)) from None
    resolvable = args.ray is None or device == "cuda" or args.slice_precision != "auto"
    precision = resolve_slice_precision(args.slice_precision, device) if resolvable else "auto"
    path = model_path(spec)
    checkpoint = f":{file_sha256(path)[:16]}" if path.is_file() else ""
    return f"local:{spec}{checkpoint}:{device}:{precision}:{args.click_pathway}"


def _local(args: argparse.Namespace, compile_encoder: bool):
    from ..model.checkpoint import BUNDLED_MODELS

    spec = args.model if args.model in BUNDLED_MODELS else str(Path(args.model).resolve())
    identity = local_identity(args, spec)

    def make_segmenter():
        from .segmenters import LocalSegmenter, SegmenterError

        try:
            return LocalSegmenter.load(spec, device=args.device, sam_checkpoint=args.sam_checkpoint,
                                       click_pathway=args.click_pathway, compile_encoder=compile_encoder,
                                       slice_precision=args.slice_precision)
        except SegmenterError as error:
            raise CLIError(str(error)) from None

    return make_segmenter, identity


def _server(args: argparse.Namespace):
    from .segmenters import SegmenterError, ServerSegmenter

    try:
        segmenter = ServerSegmenter.connect(args.server, api_key=args.api_key, timeout=args.timeout)
    except SegmenterError as error:
        raise CLIError(str(error)) from None
    return (lambda: segmenter), segmenter.identity


def print_report(report: BatchReport, out: OutputFolder) -> None:
    """The short table at the end of a run, then the totals."""
    rows = report.rows[:TABLE_ROWS]
    widths = {c: max([len(c)] + [len(row[c]) for row in rows]) for c in TABLE_COLUMNS}
    print("  ".join(c.ljust(widths[c]) for c in TABLE_COLUMNS))
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in TABLE_COLUMNS))
    if len(report.rows) > TABLE_ROWS:
        print(f"... {len(report.rows) - TABLE_ROWS} more case(s) in {out.summary_path}")
    for row in report.rows:
        if row["status"] == FAILED:
            print(f"{row['id']}: {row['error']}")
    counts = {status: sum(row["status"] == status for row in report.rows) for status in (DONE, FAILED, PENDING)}
    rate = f", {report.ran / report.seconds * 60:.1f} cases/min" if report.ran and report.seconds > 0 else ""
    print(f"sam3d batch: {len(report.rows)} case(s): {counts[DONE]} done, {counts[FAILED]} failed, "
          f"{counts[PENDING]} pending; ran {report.ran} in {report.seconds:.1f} s{rate} "
          f"({report.skipped} finished before); summary {out.summary_path}, log {out.log_path}")
