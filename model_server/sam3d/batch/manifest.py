"""The batch manifest: which cases to segment, from which image, with which clicks.

A manifest is a JSON or a CSV file (chosen by its ending); relative paths in it are relative to
the manifest's folder. Each case has:

``id``
    a name for the case's output files (``<id>.seg.nrrd``): letters, digits, ``. _ -`` and
    spaces, not starting with a dot, unique in the manifest.
``image``
    a NIfTI / NRRD / MHA file, a DICOM series folder, or ``dicomweb:STUDY_UID/SERIES_UID``: a
    series on the DICOMweb server of ``--dicomweb URL``.
``prompts``
    either a Slicer markups file (``.mrk.json`` / ``.json``; its lesions: see
    ``sam3d.batch.prompts.lesions_from_markups``) or inline clicks in RAS millimetres (as Slicer
    shows them), each with the lesion it belongs to and its sign:

    - JSON: ``[{"lesion": 1, "ras": [R, A, S], "label": "+"}, {"lesion": 1, "ras": [...], "label": "-"}, ...]``
    - CSV: ``1:R,A,S:+;1:R,A,S:-;2:R,A,S:+`` (``lesion:R,A,S:sign``, separated by ``;``)

    and a lesion's box, two opposite corners in RAS mm (corners on one slice: a 2D box there),
    as ``sam3d segment --box`` takes it:

    - JSON: ``{"lesion": 2, "box": [[R1, A1, S1], [R2, A2, S2]]}`` among the clicks;
    - CSV: ``2:box:R1,A1,S1:R2,A2,S2``.

    Every lesion needs a box or at least one positive click (a box with only negative clicks is
    fine), and has at most one box. ``prompts`` may be left out when the case
    gets its clicks from a prior mask (``--prompts-from-mask``) or from another case
    (``--propagate-from``).
``reference`` (optional)
    a label image, ``.seg.nrrd`` or DICOM SEG to score the result against (Dice, NSD in summary.csv).
``reference_label`` (optional)
    the label value of the reference that counts as foreground (default: every non-zero voxel).
``prior_mask`` (optional; or the column named by ``--prompts-from-mask``)
    a label image, ``.seg.nrrd`` or DICOM SEG of earlier lesions of the same patient; with
    ``--prompts-from-mask`` each of its connected components becomes one lesion.
``prior_label`` (optional)
    the label value of the prior mask that counts as lesion (default: every non-zero voxel).

JSON manifest: a list of objects with these keys. CSV manifest: a header row naming the
columns ``id,image`` and any of the others, one row per case; empty cells mean "not given".

Problems in the manifest itself (a missing field, an unknown column, a malformed click, a
duplicate id) raise ``ManifestError`` naming the row and the field, before anything runs.
Problems with the files it names (an unreadable image, a broken markups file) belong to one
case: the batch records them in ``summary.csv`` and goes on.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.dicomweb import PREFIX as DICOMWEB_PREFIX, SeriesRef
from .prompts import Lesion, group_lesions, ras_box

REQUIRED_FIELDS = ("id", "image")
OPTIONAL_FIELDS = ("prompts", "reference", "reference_label", "prior_mask", "prior_label")
MARKUPS_ENDINGS = (".json",)  # ".mrk.json" and plain ".json" both end so
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\- ]*$")
_SIGNS = {"+": 1, "-": 0}


class ManifestError(ValueError):
    """The manifest cannot be used as it is; the message names the row and the field."""


@dataclass(frozen=True)
class CaseSpec:
    """One case of the manifest, with its paths resolved against the manifest's folder."""

    row: int  # 1-based number of the case in the manifest
    case_id: str
    image: Path | SeriesRef  # a file or folder, or a series on the DICOMweb server
    markups: Path | None = None  # a markups file holding the clicks ...
    inline: tuple[Lesion, ...] | None = None  # ... or the clicks written in the manifest
    reference: Path | None = None
    reference_label: int | None = None
    prior_mask: Path | None = None
    prior_label: int | None = None

    @property
    def has_prompts(self) -> bool:
        return self.markups is not None or self.inline is not None

    def describe(self) -> dict[str, Any]:
        """Everything that decides this case's result, as plain JSON values (for resume)."""
        return {
            "id": self.case_id,
            "image": str(self.image),
            "markups": None if self.markups is None else str(self.markups),
            "inline": None if self.inline is None else [lesion.describe() for lesion in self.inline],
            "reference": None if self.reference is None else str(self.reference),
            "reference_label": self.reference_label,
            "prior_mask": None if self.prior_mask is None else str(self.prior_mask),
            "prior_label": self.prior_label,
        }


def read_manifest(path: str | Path, prior_mask_field: str = "prior_mask") -> list[CaseSpec]:
    """Read a JSON or CSV manifest; ``prior_mask_field`` names the key / column holding the prior
    masks (``--prompts-from-mask COLUMN``). Raises ManifestError."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} not found; give a .json or .csv file listing the cases")
    known = REQUIRED_FIELDS + tuple(f for f in OPTIONAL_FIELDS if f != "prior_mask") + (prior_mask_field,)
    ending = path.suffix.lower()
    if ending == ".json":
        entries = _json_entries(path, known)
    elif ending == ".csv":
        entries = _csv_entries(path, known)
    else:
        raise ManifestError(f"manifest {path} must be a .json or a .csv file")
    if not entries:
        raise ManifestError(f"manifest {path} lists no case")
    cases = [_case(row, entry, path.parent, prior_mask_field) for row, entry in enumerate(entries, start=1)]
    seen: dict[str, int] = {}
    for case in cases:
        if case.case_id in seen:
            raise ManifestError(f"row {case.row}, field id: {case.case_id!r} is used by row "
                                f"{seen[case.case_id]} too; every case needs its own id")
        seen[case.case_id] = case.row
    return cases


def _json_entries(path: Path, known: tuple[str, ...]) -> list[dict[str, Any]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"manifest {path} is not readable JSON: {error}") from None
    if not isinstance(document, list):
        raise ManifestError(f"manifest {path} must hold a JSON list of cases "
                            '([{"id": ..., "image": ..., "prompts": ...}, ...])')
    for row, entry in enumerate(document, start=1):
        if not isinstance(entry, dict):
            raise ManifestError(f"row {row}: a case must be a JSON object with keys id, image, prompts, ...")
        unknown = sorted(set(entry) - set(known))
        if unknown:
            raise ManifestError(f"row {row}: unknown field(s) {', '.join(unknown)}; "
                                f"known fields: {', '.join(known)}")
    return document


def _csv_entries(path: Path, known: tuple[str, ...]) -> list[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream, skipinitialspace=True)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ManifestError(f"manifest {path} is not a readable CSV file: {error}") from None
    missing = [c for c in REQUIRED_FIELDS if c not in columns]
    if missing:
        raise ManifestError(f"manifest {path}: the header row must name the columns "
                            f"{', '.join(REQUIRED_FIELDS)} (missing: {', '.join(missing)}); "
                            "e.g. id,image,prompts,reference")
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise ManifestError(f"manifest {path}: unknown column(s) {', '.join(unknown)}; "
                            f"known columns: {', '.join(known)}")
    entries = []
    for row in rows:
        if None in row:
            raise ManifestError(f"row {len(entries) + 1}: more cells than columns; quote cells "
                                'holding commas, e.g. "1:10,20,30:+"')
        entry = {key.strip(): (value or "").strip() for key, value in row.items()}
        entries.append({key: value for key, value in entry.items() if value != ""})
    return entries


def _case(row: int, entry: dict[str, Any], folder: Path, prior_mask_field: str) -> CaseSpec:
    for field in REQUIRED_FIELDS:
        if entry.get(field) in (None, ""):
            raise ManifestError(f"row {row}: field {field} is missing")
    case_id = str(entry["id"]).strip()
    if not _ID_PATTERN.match(case_id):
        raise ManifestError(f"row {row}, field id: {case_id!r} cannot name a file; use letters, "
                            "digits, '.', '_', '-' and spaces, not starting with '.'")
    markups, inline = None, None
    prompts = entry.get("prompts")
    if isinstance(prompts, str) and prompts.lower().endswith(MARKUPS_ENDINGS):
        markups = _path(row, "prompts", prompts, folder)
    elif isinstance(prompts, str) and prompts:
        inline = _parse_inline_text(row, prompts)
    elif isinstance(prompts, list):
        inline = _parse_inline_list(row, prompts)
    elif prompts is not None:
        raise ManifestError(f"row {row}, field prompts: give a markups file path or a list of "
                            '{"lesion", "ras", "label"} clicks and {"lesion", "box"} boxes')
    return CaseSpec(
        row=row,
        case_id=case_id,
        image=_image(row, entry["image"], folder),
        markups=markups,
        inline=inline,
        reference=_optional_path(row, "reference", entry.get("reference"), folder),
        reference_label=_optional_int(row, "reference_label", entry.get("reference_label")),
        prior_mask=_optional_path(row, prior_mask_field, entry.get(prior_mask_field), folder),
        prior_label=_optional_int(row, "prior_label", entry.get("prior_label")),
    )


def _image(row: int, value: Any, folder: Path) -> Path | SeriesRef:
    if isinstance(value, str) and value.strip().startswith(DICOMWEB_PREFIX):
        try:
            return SeriesRef.parse(value)
        except ValueError as error:
            raise ManifestError(f"row {row}, field image: {error}") from None
    return _path(row, "image", value, folder)


def cases_from_series(series: list[SeriesRef], prompts_folder: Path | None) -> list[CaseSpec]:
    """One case per series found by ``--query``, named by its series UID; its clicks come from
    ``PROMPTS_FOLDER/<series UID>.mrk.json`` and its prior mask from ``<series UID>.seg.nrrd`` /
    ``.seg.dcm`` / ``.nii.gz`` / ``.nrrd`` there, when the files exist."""
    cases = []
    for row, ref in enumerate(series, start=1):
        def beside(*endings: str) -> Path | None:
            if prompts_folder is None:
                return None
            return next((prompts_folder / f"{ref.series_uid}{e}" for e in endings
                         if (prompts_folder / f"{ref.series_uid}{e}").is_file()), None)

        cases.append(CaseSpec(row=row, case_id=ref.series_uid, image=ref, markups=beside(".mrk.json"),
                              prior_mask=beside(".seg.nrrd", ".seg.dcm", ".nii.gz", ".nrrd")))
    return cases


def _path(row: int, field: str, value: Any, folder: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"row {row}, field {field}: expected a file path, got {value!r}")
    path = Path(value.strip()).expanduser()
    return path if path.is_absolute() else folder / path


def _optional_path(row: int, field: str, value: Any, folder: Path) -> Path | None:
    return None if value in (None, "") else _path(row, field, value, folder)


def _optional_int(row: int, field: str, value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        number = -1
    if number < 0 or isinstance(value, (bool, float)):
        raise ManifestError(f"row {row}, field {field}: expected a label value (a whole number "
                            f">= 0), got {value!r}")
    return number


def _parse_inline_text(row: int, text: str) -> tuple[Lesion, ...]:
    """'1:R,A,S:+;1:R,A,S:-;2:box:R1,A1,S1:R2,A2,S2' -> lesions."""
    clicks, boxes = [], []
    for number, item in enumerate([part.strip() for part in text.split(";") if part.strip()], start=1):
        parts = item.split(":")
        if len(parts) == 4 and parts[1].strip().lower() == "box":
            boxes.append(_box(row, number, parts[0], [parts[2].split(","), parts[3].split(",")]))
            continue
        if len(parts) != 3:
            raise ManifestError(f"row {row}, field prompts, click {number}: {item!r} is not "
                                "lesion:R,A,S:sign (e.g. 1:-12.5,30,4:+) nor lesion:box:R1,A1,S1:R2,A2,S2")
        clicks.append(_click(row, number, parts[0], parts[1].split(","), parts[2]))
    return _lesions(row, clicks, boxes)


def _parse_inline_list(row: int, items: list[Any]) -> tuple[Lesion, ...]:
    """[{"lesion": 1, "ras": [R, A, S], "label": "+"}, {"lesion": 2, "box": [[R, A, S], [R, A, S]]}, ...] -> lesions."""
    clicks, boxes = [], []
    for number, item in enumerate(items, start=1):
        if isinstance(item, dict) and set(item) == {"lesion", "box"}:
            boxes.append(_box(row, number, item["lesion"], item["box"]))
            continue
        if not isinstance(item, dict) or set(item) != {"lesion", "ras", "label"}:
            raise ManifestError(f"row {row}, field prompts, click {number}: expected "
                                '{"lesion": 1, "ras": [R, A, S], "label": "+" or "-"} or '
                                '{"lesion": 1, "box": [[R, A, S], [R, A, S]]}, got ' f"{item!r}")
        ras = item["ras"] if isinstance(item["ras"], list) else [item["ras"]]
        clicks.append(_click(row, number, item["lesion"], ras, item["label"]))
    return _lesions(row, clicks, boxes)


def _lesion_number(where: str, lesion: Any) -> int:
    try:
        lesion_number = int(str(lesion).strip())
    except ValueError:
        lesion_number = 0
    if lesion_number < 1 or isinstance(lesion, (bool, float)):
        raise ManifestError(f"{where}: the lesion must be a number 1, 2, ..., got {lesion!r}")
    return lesion_number


def _click(row: int, number: int, lesion: Any, ras: list[Any], sign: Any) -> tuple[int, np.ndarray, int]:
    where = f"row {row}, field prompts, click {number}"
    lesion_number = _lesion_number(where, lesion)
    try:
        point = np.array([float(v) for v in ras], dtype=np.float64)
    except (TypeError, ValueError):
        point = np.zeros(0)
    if point.shape != (3,) or not np.isfinite(point).all():
        raise ManifestError(f"{where}: the point must be R, A, S (three numbers in mm), got {ras!r}")
    sign = str(sign).strip()
    if sign not in _SIGNS:
        raise ManifestError(f"{where}: the label must be '+' (positive) or '-' (negative), got {sign!r}")
    return lesion_number, point, _SIGNS[sign]


def _box(row: int, number: int, lesion: Any, corners: Any) -> tuple[int, np.ndarray]:
    where = f"row {row}, field prompts, item {number}"
    lesion_number = _lesion_number(where, lesion)
    box = ras_box(corners)
    if box is None:
        raise ManifestError(f"{where}: a box is two opposite corners [[R1, A1, S1], [R2, A2, S2]] (six "
                            f"finite numbers in mm), got {corners!r}")
    return lesion_number, box


def _lesions(row: int, clicks: list[tuple[int, np.ndarray, int]],
             boxes: list[tuple[int, np.ndarray]]) -> tuple[Lesion, ...]:
    if not clicks and not boxes:
        raise ManifestError(f"row {row}, field prompts: no click or box given")
    try:
        return tuple(group_lesions([c[0] for c in clicks], np.array([c[1] for c in clicks]).reshape(-1, 3),
                                   np.array([c[2] for c in clicks], dtype=np.int64), boxes))
    except ValueError as error:
        raise ManifestError(f"row {row}, field prompts: {error}") from None
