"""A PACS through DICOMweb (dicomweb-client): find series (QIDO-RS), fetch them (WADO-RS),
store DICOM SEG objects (STOW-RS).

A series is named ``dicomweb:STUDY_UID/SERIES_UID`` (``SeriesRef``). The server is a
``DicomWebServer`` - the base URL of its DICOMweb API (Orthanc: ``http://HOST:8042/dicom-web``)
and an optional bearer token; HTTP basic credentials may be given in the URL
(``http://user:password@host:8042/dicom-web``). Every failure becomes a ``DicomWebError`` whose
message says which server, what failed and what to do.

Needs the ``dicom`` extra: ``pip install 'sam3dprompt-server[dicom]'``.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PREFIX = "dicomweb:"
# Series that hold no image to segment (our own SEGs among them): a --query leaves them out.
NON_IMAGE_MODALITIES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "KO", "PR", "DOC", "REG", "PLAN"}
RETRY_ATTEMPTS = 3
_STUDY, _SERIES, _MODALITY, _DESCRIPTION = "0020000D", "0020000E", "00080060", "0008103E"


class DicomWebError(ValueError):
    """The DICOMweb server cannot be used for this; the message says why and what to do."""


@dataclass(frozen=True)
class SeriesRef:
    """One series on the DICOMweb server."""

    study_uid: str
    series_uid: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.study_uid}/{self.series_uid}"

    @classmethod
    def parse(cls, text: str) -> "SeriesRef":
        """'dicomweb:STUDY_UID/SERIES_UID' -> SeriesRef; raises ValueError for another form."""
        study, _, series = text.strip()[len(PREFIX):].partition("/")
        uid = "0123456789."
        if not text.strip().startswith(PREFIX) or not study or not series or set(study + series) - set(uid):
            raise ValueError(f"{text!r} is not dicomweb:STUDY_UID/SERIES_UID (two DICOM UIDs: digits and dots)")
        return cls(study, series)


@dataclass(frozen=True)
class DicomWebServer:
    """Where the PACS is (a plain value: it travels to Ray workers)."""

    url: str
    token: str | None = None
    timeout: float = 60.0

    def __str__(self) -> str:  # the URL without credentials, for messages and logs
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))

    def client(self):
        """A dicomweb-client ``DICOMwebClient`` with this server's credentials."""
        import requests
        from dicomweb_client.api import DICOMwebClient

        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DicomWebError(f"--dicomweb {self.url!r}: give the http(s) URL of the DICOMweb API, e.g. "
                                "http://localhost:8042/dicom-web (Orthanc)")
        session = requests.Session()
        if parts.username:
            session.auth = (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        client = DICOMwebClient(str(self), session=session, timeout=self.timeout)
        # dicomweb-client retries failed requests (also refused connections) 5 times over ~30 s;
        # 3 attempts within ~3 s ride over a busy moment without stalling a batch on a dead server.
        client.set_http_retry_params(retry=True, max_attempts=RETRY_ATTEMPTS, wait_exponential_multiplier=500)
        return client


@contextlib.contextmanager
def _failures(server: DicomWebServer, action: str) -> Iterator[None]:
    """Turns connection and HTTP failures of ``action`` into a DicomWebError that says what to do."""
    import requests

    try:
        yield
    except requests.exceptions.HTTPError as error:
        status = error.response.status_code if error.response is not None else 0
        if status in (401, 403):
            hint = "give valid credentials: --dicomweb-token TOKEN, or user:password@ in the URL"
        elif status == 404:
            hint = "check the UIDs, and that the URL is the DICOMweb root (Orthanc: http://HOST:8042/dicom-web)"
        else:
            hint = "see the server's log"
        reason = error.response.reason if error.response is not None else ""
        raise DicomWebError(f"DICOMweb server {server}: {action} failed with HTTP {status} {reason}; {hint}") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
        raise DicomWebError(f"cannot reach the DICOMweb server {server} to {action} ({type(error).__name__}); "
                            "check --dicomweb and that the server is running") from None


def fetch_series(server: DicomWebServer, ref: SeriesRef, folder: str | os.PathLike) -> list[Path]:
    """Fetch every instance of ``ref`` (WADO-RS) into ``folder``, one file per instance."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _failures(server, f"fetch series {ref}"):
        datasets = server.client().retrieve_series(ref.study_uid, ref.series_uid)
    if not datasets:
        raise DicomWebError(f"DICOMweb server {server} returned no instance of series {ref}")
    files = []
    for number, dataset in enumerate(datasets):
        path = folder / f"{number:05d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def store_instance(server: DicomWebServer, data: bytes) -> None:
    """Send one DICOM file (e.g. a SEG) to the server (STOW-RS); raises DicomWebError unless the
    server stored it."""
    import pydicom
    from pydicom.filebase import DicomBytesIO

    dataset = pydicom.dcmread(DicomBytesIO(data))
    with _failures(server, "store the DICOM SEG"):
        reply = server.client().store_instances([dataset], study_instance_uid=str(dataset.StudyInstanceUID))
    failed = reply.get("FailedSOPSequence") if reply is not None else None
    if failed:
        reason = failed[0].get("FailureReason", "?")
        raise DicomWebError(f"DICOMweb server {server} did not store the DICOM SEG (failure reason {reason})")


def query_series(server: DicomWebServer, query: str) -> list[tuple[SeriesRef, str]]:
    """The image series matching a QIDO-RS query ('Modality=CT&StudyDate=20240101-20240131'),
    with a description for each; series of non-image objects (SEG, SR, ...) are left out."""
    filters = dict(urllib.parse.parse_qsl(query, keep_blank_values=False, strict_parsing=False))
    if query.strip() and not filters:
        raise DicomWebError(f"--query {query!r}: give DICOM attributes as KEY=VALUE joined by '&', "
                            "e.g. 'Modality=CT&StudyDate=20240101-20240131'")
    with _failures(server, f"search for series ({query or 'all'})"):
        found = server.client().search_for_series(search_filters=filters, get_remaining=True)
    series = []
    for item in found:
        modality = _value(item, _MODALITY)
        if modality in NON_IMAGE_MODALITIES:
            continue
        series.append((SeriesRef(_value(item, _STUDY), _value(item, _SERIES)),
                       f"{modality} {_value(item, _DESCRIPTION)}".strip()))
    return series


def _value(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])
