"""`sam3d batch --ray local` on this machine (2 Ray workers, 1 CPU each): the same bytes as an
in-process run, a worker killed by its pid mid-run loses and repeats no case, and an interrupted
run is finished by --resume. Each run starts and stops its own small Ray runtime."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import sam3d
from sam3d.cli import main
from sam3d.data.clicks import centre_click
from sam3d.data.io import write_image
from sam3d.data.markups import write_markups
from sam3d.data.phantoms import TUMOR_LABEL, generate_case

pytest.importorskip("ray", reason="Ray is in the test extra (pip install -e './model_server[test]')")

SHAPE = (32, 64, 64)
IMAGES = 6
RAY = ("--ray", "local", "--workers", "2")
COMPARED = ("id", "points", "lesions", "voxels", "volume_ml", "dice", "nsd", "status", "error")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """13 cases: 6 phantoms twice (inline clicks, or a markups file) and one with a click outside
    its image (it fails for its own reasons)."""
    folder = tmp_path_factory.mktemp("ray_cases")
    entries = []
    for seed in range(IMAGES):
        image, label = generate_case(seed, shape=SHAPE)
        write_image(image, folder / f"img{seed}.nii.gz")
        write_image(label, folder / f"img{seed}_label.nii.gz")
        components, count = ndimage.label(label.array == TUMOR_LABEL)
        clicks = image.kji_to_ras([centre_click(components == n, image.spacing) for n in range(1, count + 1)])
        write_markups(folder / f"img{seed}.mrk.json", clicks[:1], np.array([1]))
        common = {"image": f"img{seed}.nii.gz", "reference": f"img{seed}_label.nii.gz", "reference_label": TUMOR_LABEL}
        entries.append(common | {"id": f"inline{seed}", "prompts": [
            {"lesion": n, "ras": ras.tolist(), "label": "+"} for n, ras in enumerate(clicks, 1)]})
        entries.append(common | {"id": f"markups{seed}", "prompts": f"img{seed}.mrk.json"})
    entries.append({"id": "outside", "image": "img0.nii.gz", "prompts": [{"lesion": 1, "ras": [9000, 0, 0], "label": "+"}]})
    path = folder / "manifest.json"
    path.write_text(json.dumps(entries))
    return path


def case_ids(manifest: Path) -> list[str]:
    return [entry["id"] for entry in json.loads(manifest.read_text())]


def batch(*args) -> int:
    return main(["batch", *map(str, args), "--device", "cpu", "--quiet"])


def summary(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


def assert_same_outputs(out: Path, reference: Path) -> None:
    """Byte-identical .seg.nrrd files and the same summary figures (all but the seconds)."""
    names = sorted(p.name for p in reference.glob("*.seg.nrrd"))
    assert sorted(p.name for p in out.glob("*.seg.nrrd")) == names and len(names) == 2 * IMAGES
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert compared_rows(out) == compared_rows(reference)


def compared_rows(out: Path) -> list[list[str]]:
    """The summary's compared columns; an error names its image by file name (runs may read
    the same images from different folders)."""
    return [[re.sub(r"/\S*/", "", row[c]) if c == "error" else row[c] for c in COMPARED] for row in summary(out)]


def wait_for(predicate, seconds: float = 600.0) -> None:
    """Poll until ``predicate`` holds; the limit only guards against a hang (a shared CI host
    under load has taken over 240 s to start Ray and finish three cases)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def log_text(out: Path) -> str:
    path = out / "batch.log"
    return path.read_text() if path.is_file() else ""


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, manifest, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("in_process") / "out"
    assert batch(manifest, "--out", out, "--model", tiny_model) == 1  # the case outside fails
    return out


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, manifest, tiny_model) -> tuple[Path, int]:
    """A --ray run during which the test kills worker 1's process (pid from the actor, in the
    log) right after its first case, while it segments its next one."""
    out = tmp_path_factory.mktemp("killed") / "out"
    victim = {}

    def kill_worker_1() -> None:
        wait_for(lambda: re.search(r"done: .*\(worker 1\)", log_text(out)))
        victim["pid"] = int(re.search(r"worker 1 ready: pid (\d+)", log_text(out)).group(1))
        os.kill(victim["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_worker_1, daemon=True)
    killer.start()
    code = batch(manifest, "--out", out, "--model", tiny_model, *RAY)
    killer.join(timeout=5)
    assert "pid" in victim, "the run ended before worker 1 finished a case"
    assert code == 1  # the case outside its image
    return out, victim["pid"]


def test_a_ray_run_writes_the_bytes_of_an_in_process_run(killed_run, in_process):
    out, _ = killed_run
    assert_same_outputs(out, in_process)
    log = log_text(out)
    assert "ray local (Ray " in log and "2 worker(s) of 1 CPU(s), 0 GPU(s)" in log
    assert re.search(r"done: .*\(worker 2\)", log)  # both workers segmented cases
    # a case that fails for its own reasons is recorded once, not retried
    assert log.count("outside: failed") == 1 and "died while segmenting outside" not in log
    assert "lies outside the image" in {row["id"]: row for row in summary(out)}["outside"]["error"]


def test_a_killed_worker_loses_and_repeats_no_case(killed_run, manifest):
    out, pid = killed_run
    log = log_text(out)
    died = re.findall(r"worker 1 died while segmenting (\S+) \(attempt 1 of 3\)", log)
    assert len(died) == 1, log  # the kill hit worker 1 in the middle of a case ...
    assert re.search(rf"{died[0]}: done: .*\(worker 2\)", log)  # ... that ran again on the other worker
    pids = [int(p) for p in re.findall(r"worker 1 ready: pid (\d+)", log)]
    assert pids[0] == pid and pid not in pids[1:]  # when Ray restarted it before the end: a new process
    ids = case_ids(manifest)
    for case_id in ids:  # every case once: no case lost, none written twice
        assert len(re.findall(rf"INFO {case_id}: done:|ERROR {case_id}: failed", log)) == 1, case_id
    assert [row["id"] for row in summary(out)] == ids
    assert [row["status"] for row in summary(out)] == ["done"] * (len(ids) - 1) + ["failed"]
    assert sorted(p.name for p in (out / ".state").iterdir()) == sorted(f"{i}.json" for i in ids)


def test_an_interrupted_ray_run_is_finished_by_resume(tmp_path, manifest, tiny_model, in_process):
    """Ctrl-C (SIGINT) stops a --ray run in a separate process after a few cases; --resume runs
    only the cases it did not finish, and the outputs are those of an uninterrupted run.

    Until the interrupt, the manifest's last image is a named pipe: the workers that reach it wait,
    so the run cannot end before the signal arrives, however fast the machine."""
    original = manifest
    manifest = tmp_path / "cases" / original.name
    shutil.copytree(original.parent, manifest.parent)
    held = manifest.parent / f"img{IMAGES - 1}.nii.gz"
    held.unlink()
    os.mkfifo(held)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sam3d", "batch", str(manifest), "--out", str(out), "--model", str(tiny_model),
               "--device", "cpu", "--quiet", *RAY]
    env = os.environ | {"PYTHONPATH": str(Path(sam3d.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    # A handled signal is reset to its default in the child, an ignored one stays ignored: where the
    # suite runs in a background job (SIGINT ignored, as POSIX shells start them) the child would
    # never see the Ctrl-C. Handle it here while the child starts.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        wait_for(lambda: log_text(out).count(": done:") >= 3 or process.poll() is not None)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
    assert process.returncode == 130, output
    assert "interrupted" in output and "--resume" in output
    statuses = {row["id"]: row["status"] for row in summary(out)}
    finished = sorted(i for i, status in statuses.items() if status != "pending")
    assert 3 <= len(finished) < len(statuses), statuses
    assert statuses["outside"] == "pending", statuses  # listed after the held image
    held.unlink()
    shutil.copyfile(original.parent / held.name, held)
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.seg.nrrd")}

    assert batch(manifest, "--out", out, "--model", tiny_model, "--resume", *RAY) == 1
    log = log_text(out)
    total = len(statuses)
    skipped = sum(statuses[i] == "done" for i in finished)  # a failed case runs again
    assert f"{total} case(s) in the manifest, {skipped} finished before (resume on), {total - skipped} to run now" in log
    resumed = log[log.rindex("finished before (resume on)"):]
    assert all(f"{i}: done" not in resumed for i in finished if statuses[i] == "done")
    assert {name: mtime for name, mtime in ((p.name, p.stat().st_mtime_ns) for p in out.glob("*.seg.nrrd"))
            if name in written} == written
    assert_same_outputs(out, in_process)


@pytest.mark.parametrize("options, message", [
    (("--workers", "2"), "--workers go(es) with --ray ADDRESS"),
    (("--ray", "head:6379"), "--ray 'head:6379': give 'local', 'auto' or 'ray://HOST:PORT'"),
    (("--ray", "local", "--server", "http://127.0.0.1:9"), "--ray and --server exclude each other"),
    (("--ray", "local", "--gpus-per-worker", "0.25", "--device", "cpu"), "--gpus-per-worker 0.25 with --device cpu"),
    (("--ray", "local", "--device", "cuda"), "give --gpus-per-worker"),
    (("--ray", "local", "--gpus-per-worker", "1.5"), "give 0, a fraction of one GPU"),
    (("--ray", "local", "--workers", "0"), "--workers 0: give at least 1 worker"),
])
def test_bad_ray_options_are_user_errors(manifest, tmp_path, tiny_model, capsys, options, message):
    args = ["batch", str(manifest), "--out", str(tmp_path / "out"), "--model", str(tiny_model), "--quiet", *options]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
