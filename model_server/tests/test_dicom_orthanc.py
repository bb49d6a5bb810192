"""`sam3d batch` against a real PACS: Orthanc (Debian's orthanc + orthanc-dicomweb) on free
loopback ports with a temporary storage folder and HTTP basic authentication.

A CT series goes into Orthanc, batch segments it by DICOMweb from clicks, stores the DICOM SEG
back; fetched again the SEG validates, references the right instances and holds the voxels of
the run's .seg.nrrd. A --query run finds the series; an unauthorised or unreachable server fails
the case with the reason and leaves nothing in the PACS."""

from __future__ import annotations

import csv
import io
import json
import shutil
import socket
import subprocess
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests

from dicom_helpers import assert_frames_reference_their_slices, oblique_direction, on_grid, phantom_ct, write_ct_series
from sam3d.cli import main
from sam3d.data.dicom_seg import read_dicom_seg
from sam3d.data.dicomweb import DicomWebServer, query_series
from sam3d.data.io import read_dicom_series
from sam3d.data.markups import write_markups
from sam3d.data.segio import read_segmentation

ORTHANC = shutil.which("Orthanc")
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "sam3d", "s3cret"

pytestmark = pytest.mark.skipif(
    ORTHANC is None or not PLUGIN.is_file(),
    reason="Orthanc with its DICOMweb plugin is not installed (Debian: apt-get install orthanc orthanc-dicomweb; "
           "scripts/setup.sh does it where apt-get is available)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A running Orthanc; yields its HTTP root. Stopped (and its storage removed) at the end."""
    folder = tmp_path_factory.mktemp("orthanc")
    port, dicom_port = free_port(), free_port()
    config = {"Name": "sam3d-test", "HttpPort": port, "DicomPort": dicom_port, "StorageDirectory": str(folder / "db"),
              "IndexDirectory": str(folder / "db"), "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
              "RegisteredUsers": {USER: PASSWORD}, "Plugins": [str(PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("w")
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{root}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield root
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def instance_count(root: str) -> int:
    return requests.get(f"{root}/statistics", auth=(USER, PASSWORD), timeout=10).json()["CountInstances"]


def dicomweb_url(root: str, credentials: bool = True) -> str:
    host = root.removeprefix("http://")
    return f"http://{USER}:{PASSWORD}@{host}/dicom-web" if credentials else f"http://{host}/dicom-web"


@pytest.fixture(scope="module")
def ct_in_pacs(orthanc, tmp_path_factory):
    """An oblique CT series written as a scanner would, uploaded to Orthanc (STOW-RS)."""
    volume, tumor_kji = phantom_ct(oblique_direction(12))
    folder = tmp_path_factory.mktemp("ct") / "series"
    files = write_ct_series(volume, folder)
    client = DicomWebServer(dicomweb_url(orthanc)).client()
    client.store_instances([pydicom.dcmread(f) for f in files])
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return volume, tumor_kji, folder, f"dicomweb:{first.StudyInstanceUID}/{first.SeriesInstanceUID}"


def run_batch(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main(["batch", *args, "--quiet"])
    return status, out.getvalue() + err.getvalue()


def summary(folder: Path) -> dict[str, dict[str, str]]:
    return {row["id"]: row for row in csv.DictReader((folder / "summary.csv").open())}


def write_manifest(path: Path, image: str, volume, tumor_kji) -> Path:
    r, a, s = volume.kji_to_ras([tumor_kji])[0]
    path.write_text(json.dumps([{"id": "ct1", "image": image,
                                 "prompts": [{"lesion": 1, "ras": [r, a, s], "label": "+"}]}]))
    return path


def test_round_trip_through_orthanc(tiny_model, orthanc, ct_in_pacs, tmp_path):
    volume, tumor_kji, folder, image = ct_in_pacs
    manifest = write_manifest(tmp_path / "cases.json", image, volume, tumor_kji)
    before = instance_count(orthanc)
    status, text = run_batch(str(manifest), "--out", str(tmp_path / "out"), "--dicomweb", dicomweb_url(orthanc),
                             "--output-format", "both", "--store", "--model", str(tiny_model), "--device", "cpu")
    assert status == 0, text
    assert instance_count(orthanc) == before + 1  # the SEG, once
    server = DicomWebServer(dicomweb_url(orthanc))
    study = image.split(":")[1].split("/")[0]
    segs = server.client().search_for_series(study_instance_uid=study, search_filters={"Modality": "SEG"})
    assert len(segs) == 1
    fetched = server.client().retrieve_series(study, segs[0]["0020000E"]["Value"][0])
    assert len(fetched) == 1
    fetched[0].save_as(tmp_path / "fetched.dcm", enforce_file_format=True)

    seg = hd.seg.segread(tmp_path / "fetched.dcm")  # highdicom reads it back
    local = pydicom.dcmread(tmp_path / "out" / "ct1.seg.dcm")
    assert seg.SOPInstanceUID == local.SOPInstanceUID
    assert_frames_reference_their_slices(seg, folder)
    assert seg.get_segment_description(1).algorithm_type == hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
    nrrd_segments, nrrd_grid = read_segmentation(tmp_path / "out" / "ct1.seg.nrrd")
    image_volume = read_dicom_series(folder).volume
    assert nrrd_grid.same_grid(image_volume, tolerance=1e-4)
    segments, grid = read_dicom_seg(tmp_path / "fetched.dcm")
    assert nrrd_segments[0].mask.any()
    np.testing.assert_array_equal(on_grid(grid, segments[0].mask, image_volume), nrrd_segments[0].mask)
    assert f"DICOM SEG stored in {server}" in (tmp_path / "out" / "batch.log").read_text()


def test_query_builds_the_cases_from_the_pacs(tiny_model, orthanc, ct_in_pacs, tmp_path):
    volume, tumor_kji, _, image = ct_in_pacs
    series_uid = image.split("/")[-1]
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    write_markups(prompts / f"{series_uid}.mrk.json", volume.kji_to_ras([tumor_kji]), np.array([1]))
    status, text = run_batch("--dicomweb", dicomweb_url(orthanc), "--query", "Modality=CT&PatientID=PHANTOM1",
                             "--prompts-folder", str(prompts), "--out", str(tmp_path / "out"),
                             "--model", str(tiny_model), "--device", "cpu")
    assert status == 0, text
    rows = summary(tmp_path / "out")
    assert list(rows) == [series_uid] and rows[series_uid]["status"] == "done"
    assert [ref for ref, _ in query_series(DicomWebServer(dicomweb_url(orthanc)), "PatientID=NOBODY")] == []


@pytest.mark.parametrize("server", ["unauthorised", "unreachable"])
def test_a_server_we_cannot_use_fails_the_case_and_writes_nothing(tiny_model, orthanc, ct_in_pacs, tmp_path, server):
    volume, tumor_kji, _, image = ct_in_pacs
    url = dicomweb_url(orthanc, credentials=False) if server == "unauthorised" else \
        f"http://127.0.0.1:{free_port()}/dicom-web"
    manifest = write_manifest(tmp_path / "cases.json", image, volume, tumor_kji)
    before = instance_count(orthanc)
    status, text = run_batch(str(manifest), "--out", str(tmp_path / "out"), "--dicomweb", url,
                             "--dicomweb-token", "not-a-valid-token", "--output-format", "dicom-seg", "--store",
                             "--model", str(tiny_model), "--device", "cpu")
    assert status == 1, text
    row = summary(tmp_path / "out")["ct1"]
    expected = "failed with HTTP 401 Unauthorized" if server == "unauthorised" else "cannot reach the DICOMweb server"
    assert row["status"] == "failed" and expected in row["error"]
    assert not (tmp_path / "out" / "ct1.seg.dcm").exists()
    assert instance_count(orthanc) == before
    status, text = run_batch("--dicomweb", url, "--query", "Modality=CT", "--out", str(tmp_path / "q"),
                             "--propagate-from", "x", "--model", str(tiny_model))
    assert status == 2 and expected in text


def test_a_refused_store_fails_the_case_and_keeps_no_output(tiny_model, orthanc, ct_in_pacs, tmp_path):
    volume, tumor_kji, folder, _ = ct_in_pacs
    manifest = write_manifest(tmp_path / "cases.json", str(folder), volume, tumor_kji)
    before = instance_count(orthanc)
    status, text = run_batch(str(manifest), "--out", str(tmp_path / "out"), "--dicomweb",
                             dicomweb_url(orthanc, credentials=False), "--output-format", "both", "--store",
                             "--model", str(tiny_model), "--device", "cpu")
    assert status == 1, text
    row = summary(tmp_path / "out")["ct1"]
    assert row["status"] == "failed" and "store the DICOM SEG failed with HTTP 401" in row["error"]
    assert not list((tmp_path / "out").glob("ct1.seg.*"))
    assert instance_count(orthanc) == before
