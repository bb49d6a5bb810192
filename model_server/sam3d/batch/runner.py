"""Run a batch: every case of the manifest from its clicks to ``<id>.seg.nrrd`` and / or
``<id>.seg.dcm`` (``--output-format``), its record and its summary row, one model per worker for
the whole run.

Work is split in two: a ``CaseWorker`` (next to the model: in this process, or a Ray actor, see
``sam3d.batch.cluster``) reads a case's inputs (fetching a ``dicomweb:`` series from the PACS)
and turns them into a ``CaseResult`` - the output files' bytes, the case's record, lines for the
log; the driver (``run_batch``) chooses the cases, writes every file into the output folder
(and with ``--store`` sends the DICOM SEG to the PACS), the log, the summary and the progress
bar. A ``CaseRunner`` carries cases from the driver to the workers and results back.

A case's clicks come from, in this order: its prior mask (with ``--prompts-from-mask``), its own
prompts (markups file or inline), or the clicks of the ``--propagate-from`` case mapped onto its
image by registration. A case that fails (unreadable image, broken markups file, a click outside
the image, a server error, ...) is recorded with its error and the run goes on.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
from tqdm import tqdm

from ..data.dicom_seg import SEG_DCM_ENDING, encode_dicom_seg, is_segmentation_file, read_segments
from ..data.dicomweb import DicomWebError, DicomWebServer, SeriesRef, fetch_series, store_instance
from ..data.io import DicomSeries, Volume, atomic_write, file_sha256, read_dicom_series, read_image
from ..data.resample import resample_to_reference
from ..data.segio import SEG_ENDING, Segment, lesion_color, write_segmentation
from ..evaluate.metrics import NSD_TOLERANCE_MM, dice_and_nsd
from .manifest import CaseSpec, ManifestError
from .prompts import Lesion, check_inside, lesions_from_markups, lesions_from_mask
from .propagate import register
from .segmenters import Segmenter, SegmenterError
from .state import DONE, FAILED, CaseRecord, OutputFolder, digest, pending_row

LOGGER_NAME = "sam3d.batch"
# --output-format -> the endings of the files each case gets
OUTPUT_FORMATS = {"seg.nrrd": (SEG_ENDING,), "dicom-seg": (SEG_DCM_ENDING,), "both": (SEG_ENDING, SEG_DCM_ENDING)}


class BatchError(Exception):
    """The run cannot go on (e.g. its workers cannot start); the message says what to do."""


@dataclass
class BatchOptions:
    resume: bool = False
    limit: int | None = None  # run at most this many cases (finished ones skipped by --resume do not count)
    propagate_from: str | None = None  # case id whose clicks go to every case without prompts
    prompts_from_mask: bool = False  # cases with a prior mask take one click per component
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM
    progress: bool = True
    output_format: str = "seg.nrrd"  # a key of OUTPUT_FORMATS
    dicomweb: DicomWebServer | None = None  # where dicomweb: images come from (--dicomweb)
    store: bool = False  # send each case's DICOM SEG to the DICOMweb server (--store)


@dataclass
class BatchReport:
    """What a run did; ``rows`` are the rows of summary.csv (every manifest case, in order)."""

    rows: list[dict[str, str]]
    ran: int
    skipped: int
    seconds: float
    failed: list[str] = field(default_factory=list)


def check_images(cases: list[CaseSpec], options: BatchOptions) -> None:
    """``dicomweb:`` images need --dicomweb; raises ManifestError naming the first row without."""
    if options.dicomweb is None:
        for case in cases:
            if isinstance(case.image, SeriesRef):
                raise ManifestError(f"row {case.row} ({case.case_id}), field image: {case.image} is a series on a "
                                    "DICOMweb server; give the server: --dicomweb URL")


def open_image(image: Path | SeriesRef, options: BatchOptions, stack: contextlib.ExitStack,
               series_needed: bool = False) -> tuple[Volume, DicomSeries | None]:
    """A case's image, and its DICOM series when it is one (fetched into a temporary folder that
    ``stack`` removes) and ``series_needed`` (for a DICOM SEG) or it comes from the PACS."""
    if isinstance(image, SeriesRef):
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="sam3d_dicomweb_"))
        fetch_series(options.dicomweb, image, folder)
        try:
            series = read_dicom_series(folder)
        except ValueError as error:
            raise ValueError(f"series {image}: {error}".replace(f" in {folder}", "")) from None
        return series.volume, series
    if series_needed:
        if not Path(image).is_dir():
            raise ValueError(f"image {image}: a DICOM SEG (--output-format {options.output_format}) refers to the "
                             "slices of a DICOM series; give a DICOM series folder or a dicomweb: series, or "
                             "use --output-format seg.nrrd")
        series = read_dicom_series(image)
        return series.volume, series
    return read_image(image), None


def check_prompt_sources(cases: list[CaseSpec], options: BatchOptions) -> None:
    """Every case must have a source of clicks; raises ManifestError naming the rows without."""
    ids = [case.case_id for case in cases]
    if options.propagate_from is not None and options.propagate_from not in ids:
        raise ManifestError(f"--propagate-from {options.propagate_from!r} is not a case id of the "
                            f"manifest (ids: {', '.join(ids[:10])}{', ...' if len(ids) > 10 else ''})")
    if options.prompts_from_mask and not any(case.prior_mask for case in cases):
        raise ManifestError("--prompts-from-mask: no case of the manifest names a prior mask; add the "
                            "prior_mask column (or name your column: --prompts-from-mask COLUMN)")
    for case in cases:
        own = case.has_prompts or (options.prompts_from_mask and case.prior_mask is not None)
        if case.case_id == options.propagate_from and not own:
            raise ManifestError(f"row {case.row} ({case.case_id}), field prompts: the --propagate-from "
                                "case needs clicks of its own (prompts, or a prior mask with --prompts-from-mask)")
        if not own and options.propagate_from is None:
            hint = " or a prior_mask with --prompts-from-mask" if case.prior_mask is None else \
                "; its prior_mask is used only with --prompts-from-mask"
            raise ManifestError(f"row {case.row} ({case.case_id}), field prompts: the case has no clicks; give "
                                f"a markups file or inline clicks{hint}, or use --propagate-from CASE")


class PromptSources:
    """Resolves each case's lesions (RAS clicks); registers cases to the propagation source."""

    def __init__(self, cases: list[CaseSpec], options: BatchOptions) -> None:
        self.options = options
        self.source = next((c for c in cases if c.case_id == options.propagate_from), None)
        self._source_loaded: tuple[Volume, list[Lesion]] | None = None

    def origin(self, case: CaseSpec) -> str:
        """Which source gives the case its clicks: "prior mask", "prompts" or "propagated"."""
        if self.options.prompts_from_mask and case.prior_mask is not None:
            return "prior mask"
        if case.has_prompts or self.source is None:
            return "prompts"
        return "propagated"

    def inputs(self, case: CaseSpec, model_identity: str) -> str:
        """Digest of everything that decides the case's outputs (``--resume`` compares it)."""
        origin = self.origin(case)
        value = {"case": case.describe(), "origin": origin, "model": model_identity,
                 "nsd_tolerance_mm": self.options.nsd_tolerance_mm,
                 "markups": _content_digest(case.markups) if origin == "prompts" else None,
                 "prior_mask": _content_digest(case.prior_mask) if origin == "prior mask" else None,
                 "output_format": self.options.output_format,
                 "server": str(self.options.dicomweb) if isinstance(case.image, SeriesRef) or self.options.store else None,
                 "store": self.options.store}
        if origin == "propagated":
            value["source"] = self.inputs(self.source, model_identity)
        return digest(value)

    def lesions(self, case: CaseSpec, volume: Volume, notes: list[str]) -> list[Lesion]:
        """The case's lesions; a line for the log goes to ``notes`` (the registration)."""
        origin = self.origin(case)
        if origin == "prior mask":
            return lesions_from_mask(case.prior_mask, case.prior_label)
        if origin == "prompts":
            return list(case.inline) if case.inline is not None else lesions_from_markups(case.markups)
        source_volume, source_lesions = self._source()
        registration = register(volume, source_volume)
        notes.append(f"{case.case_id}: registered {self.source.case_id} onto it: {registration.describe()}")
        return [Lesion(lesion.number, registration.source_to_target(lesion.points_ras, source_volume, volume),
                       lesion.labels) for lesion in source_lesions]

    def _source(self) -> tuple[Volume, list[Lesion]]:
        if self._source_loaded is None:
            try:
                with contextlib.ExitStack() as stack:
                    volume, _ = open_image(self.source.image, self.options, stack)
                self._source_loaded = (volume, self.lesions(self.source, volume, []))
            except ValueError as error:
                raise ValueError(f"the --propagate-from case {self.source.case_id} cannot be used: {error}") from None
        return self._source_loaded


@dataclass
class CaseResult:
    """What a worker gives back for one case; the driver writes it into the output folder."""

    record: CaseRecord
    outputs: dict[str, bytes] = field(default_factory=dict)  # file ending -> the file, when it is done
    notes: list[str] = field(default_factory=list)  # lines for batch.log (e.g. the registration)
    warnings: list[str] = field(default_factory=list)  # for batch.log and the terminal
    trace: str = ""  # the error trace of a failed case
    worker: str = ""  # which worker ran the case ("" in this process)


class CaseWorker:
    """Runs whole cases next to one loaded model: reads the case's inputs, segments each lesion,
    scores the result, encodes the ``.seg.nrrd`` / DICOM SEG. Writes nothing into the output
    folder, so it can run on another machine than the driver."""

    def __init__(self, make_segmenter: Callable[[], Segmenter], sources: PromptSources, options: BatchOptions) -> None:
        self.segmenter = make_segmenter()
        self.sources = sources
        self.options = options

    def run(self, case: CaseSpec, inputs: str) -> CaseResult:
        """The case's result; a case that fails (unreadable file, click outside the image, backend
        error, ...) gives a failed record with its error, never an exception."""
        start = time.perf_counter()
        record = CaseRecord(case.case_id, FAILED, inputs)
        result = CaseResult(record)
        endings = OUTPUT_FORMATS[self.options.output_format]
        try:
            with contextlib.ExitStack() as stack:
                volume, series = open_image(case.image, self.options, stack, SEG_DCM_ENDING in endings)
                masks, lesions, reference = self._segment(case, volume, result)
                segments = [Segment(lesion.name, mask, lesion_color(lesion.number), f"Segment_{lesion.number}")
                            for lesion, mask in zip(lesions, masks)]
                if SEG_ENDING in endings:
                    result.outputs[SEG_ENDING] = _encode(segments, volume)
                if SEG_DCM_ENDING in endings:
                    automatic = self.sources.origin(case) != "prompts"  # clicks derived, not placed by a person
                    result.outputs[SEG_DCM_ENDING] = encode_dicom_seg(segments, series, self.segmenter.name, automatic,
                                                                       self.segmenter.checkpoint_sha256)
            union = np.logical_or.reduce(masks)
            record.voxels = int(union.sum())
            record.volume_ml = record.voxels * volume.voxel_volume_ml
            if reference is not None:
                record.dice, record.nsd = dice_and_nsd(union, reference, volume.spacing, self.options.nsd_tolerance_mm)
            record.outputs = {ending: hashlib.sha256(data).hexdigest() for ending, data in result.outputs.items()}
            record.status = DONE
        except Exception as error:  # a failing case is recorded and the run goes on
            result.outputs = {}
            record.error = _message(error)
            result.trace = traceback.format_exc().rstrip()
        record.seconds = time.perf_counter() - start
        return result

    def _segment(self, case: CaseSpec, volume: Volume, result: CaseResult):
        """The case's lesion masks, its lesions and its reference mask (or None)."""
        record = result.record
        lesions = self.sources.lesions(case, volume, result.notes)
        record.points = sum(len(lesion.labels) for lesion in lesions)
        record.lesions = len(lesions)
        record.clicks = [lesion.describe() for lesion in lesions]
        check_inside(volume, lesions, case.image)
        reference = _reference(case, volume, result.warnings) if case.reference is not None else None
        return self.segmenter.segment(volume, lesions), lesions, reference


class CaseRunner(Protocol):
    def results(self, jobs: list[tuple[CaseSpec, str]], make_worker: Callable[[], CaseWorker],
                logger: logging.Logger) -> Iterator[CaseResult]:
        """The result of every job (case, inputs digest), each exactly once, in any order.
        ``make_worker`` builds a worker (it loads a model); called only when there are jobs."""


class InProcess:
    """Every case in this process, one after the other, on one model."""

    def __init__(self) -> None:
        self.startup_seconds = 0.0  # the model load
        self.work_seconds = 0.0  # from then to the last result

    def results(self, jobs: list[tuple[CaseSpec, str]], make_worker: Callable[[], CaseWorker],
                logger: logging.Logger) -> Iterator[CaseResult]:
        if not jobs:
            return
        ready = time.perf_counter()
        worker = make_worker()
        self.startup_seconds = time.perf_counter() - ready
        note = worker.segmenter.startup_note
        logger.info("segmenter ready in %.2f s%s", self.startup_seconds, f"; {note}" if note else "")
        for case, inputs in jobs:
            yield worker.run(case, inputs)
        self.work_seconds = time.perf_counter() - ready - self.startup_seconds


def run_batch(cases: list[CaseSpec], out: OutputFolder, make_segmenter: Callable[[], Segmenter],
              model_identity: str, options: BatchOptions, runner: CaseRunner | None = None) -> BatchReport:
    """Run the cases not finished yet (all of them without ``options.resume``) with ``runner``
    (default: in this process), then rebuild summary.csv. ``make_segmenter`` is called once per
    worker, and only when a case has to run."""
    start = time.perf_counter()
    out.root.mkdir(parents=True, exist_ok=True)
    logger, handler = _file_logger(out.log_path)
    sources = PromptSources(cases, options)
    inputs = {case.case_id: sources.inputs(case, model_identity) for case in cases}
    todo = [case for case in cases if not (options.resume and out.finished(case.case_id, inputs[case.case_id]))]
    skipped = len(cases) - len(todo)
    if options.limit is not None:
        todo = todo[:options.limit]
    runner = runner or InProcess()
    logger.info("run: %d case(s) in the manifest, %d finished before (resume %s), %d to run now, model %s",
                len(cases), skipped, "on" if options.resume else "off", len(todo), model_identity)
    removed = out.remove_temporaries()
    if removed:
        logger.info("removed %d temporary file(s) an earlier, killed run left", removed)
    ran = 0
    try:
        make_worker = functools.partial(CaseWorker, make_segmenter, sources, options)
        jobs = [(case, inputs[case.case_id]) for case in todo]
        by_id = {case.case_id: case for case in todo}
        with tqdm(total=len(todo), desc="sam3d batch", unit="case", disable=not options.progress,
                  dynamic_ncols=True) as bar, contextlib.closing(runner.results(jobs, make_worker, logger)) as results:
            for result in results:
                _store(result, by_id[result.record.case_id], sources, out, options, logger)
                ran += 1
                bar.set_postfix_str(result.record.case_id)
                bar.update()
                if result.record.status == FAILED:
                    bar.write(f"sam3d batch: case {result.record.case_id} failed: {result.record.error}")
    except KeyboardInterrupt:
        logger.warning("interrupted: the cases not written yet are pending (--resume runs them)")
        raise
    finally:
        rows = [_summary_row(out, case.case_id, inputs[case.case_id]) for case in cases]
        out.write_summary(rows)
        seconds = time.perf_counter() - start
        logger.info("end: %d case(s) run in %.1f s; summary %s", ran, seconds, out.summary_path)
        logger.removeHandler(handler)
        handler.close()
    return BatchReport(rows, ran, skipped, seconds, [row["id"] for row in rows if row["status"] == FAILED])


def _summary_row(out: OutputFolder, case_id: str, inputs: str) -> dict[str, str]:
    """The case's row from its record; pending when it has none for these inputs, or when its
    output is gone."""
    record = out.current_record(case_id, inputs)
    if record is None or (record.status == DONE and not out.finished(case_id, inputs)):
        return pending_row(case_id)
    return record.summary_row()


def _store(result: CaseResult, case: CaseSpec, sources: PromptSources, out: OutputFolder,
           options: BatchOptions, logger: logging.Logger) -> None:
    """Write a worker's result into the output folder (the output files, with --store the DICOM
    SEG into the PACS, then the record); log it."""
    record = result.record
    by = f" ({result.worker})" if result.worker else ""
    for note in result.notes:
        logger.info("%s", note)
    for warning in result.warnings:
        logger.warning("%s", warning)
        tqdm.write(f"sam3d batch: warning: {warning}", file=sys.stderr)
    if record.status == DONE:
        for ending, data in result.outputs.items():
            atomic_write(out.output_path(record.case_id, ending), ending, lambda temp: temp.write_bytes(data))
        if options.store:
            try:
                store_instance(options.dicomweb, result.outputs[SEG_DCM_ENDING])
                logger.info("%s: DICOM SEG stored in %s", record.case_id, options.dicomweb)
            except DicomWebError as error:  # the case is not finished: --resume runs it again
                record.status, record.error, record.outputs = FAILED, str(error), {}
    if record.status != DONE:
        for ending in OUTPUT_FORMATS["both"]:
            out.output_path(record.case_id, ending).unlink(missing_ok=True)
    out.write_record(record)  # before the log line: a case the log calls done is finished on disk
    if record.status == DONE:
        logger.info("%s: done: %d lesion(s) from %d click(s) (%s), %d voxels, %.3f ml%s, %.2f s%s",
                    record.case_id, record.lesions, record.points, sources.origin(case), record.voxels,
                    record.volume_ml, "" if record.dice is None else f", Dice {record.dice:.4f}, NSD {record.nsd:.4f}",
                    record.seconds, by)
    else:
        logger.error("%s: failed%s: %s\n%s", record.case_id, by, record.error, result.trace)


def _encode(segments: list[Segment], volume: Volume) -> bytes:
    """The bytes of the ``.seg.nrrd`` file of ``segments`` on ``volume``'s grid."""
    with tempfile.TemporaryDirectory(prefix="sam3d_batch_") as temp:
        return write_segmentation(Path(temp) / f"case{SEG_ENDING}", segments, volume).read_bytes()


def _reference(case: CaseSpec, volume: Volume, warnings: list[str]) -> np.ndarray:
    """The reference foreground on the image's grid (resampled, nearest, when it lies on another);
    a label image with several labels and no ``reference_label`` adds a line to ``warnings``."""
    path = case.reference
    if is_segmentation_file(path):
        segments, grid = read_segments(path)
        mask = np.logical_or.reduce([s.mask for s in segments]) if segments else np.zeros(grid.shape, bool)
        if case.reference_label is not None:
            raise ValueError(f"reference {path}: reference_label applies to label images, not to a "
                             f"{SEG_ENDING} or DICOM SEG")
    else:
        grid = read_image(path)
        mask = grid.array == case.reference_label if case.reference_label is not None else grid.array != 0
        labels = np.unique(grid.array[mask])
        if case.reference_label is None and len(labels) > 1:
            warnings.append(f"{case.case_id}: reference {path} holds the labels "
                            f"{', '.join(f'{v:g}' for v in labels)} and the manifest gives no reference_label: "
                            "Dice and NSD score the lesions against all of them; give reference_label (e.g. the "
                            "tumor's label) to score one")
    labels = grid.with_array(mask.astype(np.uint8))
    if not labels.same_grid(volume):
        labels = resample_to_reference(labels, volume, interpolator="nearest", default_value=0)
    if not labels.array.any():
        which = f"label {case.reference_label}" if case.reference_label is not None else "foreground"
        raise ValueError(f"reference {path} holds no {which} voxel inside the image; check reference / "
                         "reference_label (Dice and NSD need a reference lesion)")
    return labels.array.astype(bool)


def _content_digest(path: Path | None) -> str | None:
    try:
        return None if path is None else file_sha256(path)
    except OSError:
        return "unreadable"


def _message(error: Exception) -> str:
    """One line for summary.csv: ValueErrors (IO, prompts) and backend errors are already messages."""
    text = " ".join(str(error).split())
    if isinstance(error, (ValueError, SegmenterError)):
        return text
    return f"{type(error).__name__}: {text}"


def _file_logger(path: Path) -> tuple[logging.Logger, logging.Handler]:
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger, handler
