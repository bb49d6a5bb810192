"""What a batch run leaves in its output folder, and how ``--resume`` knows what is finished.

``DIR/<id>.seg.nrrd``, ``DIR/<id>.seg.dcm``
    the case's segments (Slicer segmentation, DICOM SEG: ``--output-format``).
``DIR/.state/<id>.json``
    the case's record (``CaseRecord``), written after its output files. A case is finished when
    its record says "done", names the same inputs (a digest of the manifest entry, the prompt
    files, the model and the options) and the SHA-256 of every output file, each still there.
``DIR/summary.csv``
    one row per manifest case, rebuilt from the records at the end of every run.

Every file is written to a temporary name and renamed, so a run stopped at any moment leaves
either the old file or the new one; a run stopped hard (killed) may leave the hidden temporary
file too, which the next run into the folder removes (``remove_temporaries``; one run at a time
writes into a folder).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.io import atomic_write, file_sha256
from ..data.segio import SEG_ENDING

STATE_FOLDER = ".state"
SUMMARY_NAME = "summary.csv"
LOG_NAME = "batch.log"
SUMMARY_COLUMNS = ("id", "points", "lesions", "voxels", "volume_ml", "dice", "nsd", "seconds", "status", "error")
DONE, FAILED, PENDING = "done", "failed", "pending"
# the temporary files ``data.io.atomic_write`` writes: ".<name>.<12 hex digits>.tmp<ending>"
TEMPORARY_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp")


@dataclass
class CaseRecord:
    """The outcome of one case (a row of summary.csv)."""

    case_id: str
    status: str  # DONE or FAILED
    inputs: str  # digest of everything that decided the result
    points: int = 0
    lesions: int = 0
    voxels: int = 0
    volume_ml: float = 0.0
    dice: float | None = None
    nsd: float | None = None
    seconds: float = 0.0
    error: str = ""
    outputs: dict[str, str] = field(default_factory=dict)  # file ending -> SHA-256 of the file written
    clicks: list[dict] = field(default_factory=list)  # the lesions' RAS clicks the run used

    def summary_row(self) -> dict[str, str]:
        done = self.status == DONE
        return {
            "id": self.case_id,
            "points": str(self.points) if self.points else "",
            "lesions": str(self.lesions) if self.lesions else "",
            "voxels": str(self.voxels) if done else "",
            "volume_ml": f"{self.volume_ml:.3f}" if done else "",
            "dice": "" if self.dice is None else f"{self.dice:.4f}",
            "nsd": "" if self.nsd is None else f"{self.nsd:.4f}",
            "seconds": f"{self.seconds:.2f}",
            "status": self.status,
            "error": self.error,
        }


def digest(value: object) -> str:
    """SHA-256 of a JSON value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


class OutputFolder:
    """The files of one batch output folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def summary_path(self) -> Path:
        return self.root / SUMMARY_NAME

    @property
    def log_path(self) -> Path:
        return self.root / LOG_NAME

    def output_path(self, case_id: str, ending: str = SEG_ENDING) -> Path:
        """The case's output file with this ending (``.seg.nrrd``, ``.seg.dcm``)."""
        return self.root / f"{case_id}{ending}"

    def record_path(self, case_id: str) -> Path:
        return self.root / STATE_FOLDER / f"{case_id}.json"

    def remove_temporaries(self) -> int:
        """Remove the temporary files a killed run left (in the folder and its state folder);
        returns how many."""
        found = [path for folder in (self.root, self.root / STATE_FOLDER) if folder.is_dir()
                 for path in folder.iterdir() if path.is_file() and TEMPORARY_NAME.match(path.name)]
        for path in found:
            path.unlink(missing_ok=True)
        return len(found)

    def read_record(self, case_id: str) -> CaseRecord | None:
        """The case's record, or None when there is none (or it cannot be read)."""
        try:
            return CaseRecord(**json.loads(self.record_path(case_id).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def write_record(self, record: CaseRecord) -> None:
        text = json.dumps(asdict(record), indent=1) + "\n"
        atomic_write(self.record_path(record.case_id), ".json",
                     lambda temp: temp.write_text(text, encoding="utf-8"))

    def finished(self, case_id: str, inputs: str) -> bool:
        """Whether the case is done with these inputs and its output files are intact."""
        record = self.read_record(case_id)
        return (record is not None and record.status == DONE and record.inputs == inputs and bool(record.outputs)
                and all(self.output_path(case_id, ending).is_file()
                        and file_sha256(self.output_path(case_id, ending)) == sha for ending, sha in record.outputs.items()))

    def current_record(self, case_id: str, inputs: str) -> CaseRecord | None:
        """The case's record when it belongs to these inputs (else the case is pending)."""
        record = self.read_record(case_id)
        return record if record is not None and record.inputs == inputs else None

    def write_summary(self, rows: list[dict[str, str]]) -> None:
        def write(temp: Path) -> None:
            with temp.open("w", newline="", encoding="utf-8") as stream:
                writer = csv.DictWriter(stream, fieldnames=SUMMARY_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.summary_path, ".csv", write)


def pending_row(case_id: str) -> dict[str, str]:
    """The summary row of a case not run yet (e.g. beyond ``--limit``)."""
    return {column: "" for column in SUMMARY_COLUMNS} | {"id": case_id, "status": PENDING}
