"""`sam3d batch` end to end on generated phantoms with a random-weight tiny model: every output
written and readable by Slicer, resume, failing cases, propagation by registration, prompts
from prior masks, and the server backend."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from sam3d.batch.commands import local_identity
from sam3d.batch.state import OutputFolder
from sam3d.cli import build_parser, main
from sam3d.data.clicks import centre_click
from sam3d.data.io import Volume, file_sha256, read_image, write_image
from sam3d.data.markups import write_markups
from sam3d.data.phantoms import TUMOR_LABEL, generate_case
from sam3d.data.segio import lesion_color, read_segmentation
from sam3d.engine.slice_pathway import resolve_slice_precision
from server_helpers import run_sam3d

SHAPE = (32, 64, 64)
SEEDS = (0, 1, 2, 3, 4)


def tumor_clicks_ras(image: Volume, label: np.ndarray) -> list[np.ndarray]:
    """The most interior voxel of each tumor, as RAS."""
    components, count = ndimage.label(label == TUMOR_LABEL)
    return [image.kji_to_ras([centre_click(components == n, image.spacing)])[0] for n in range(1, count + 1)]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """Five small phantoms (image, label) in one folder, clicks of odd cases in markups files."""
    folder = tmp_path_factory.mktemp("phantoms")
    for seed in SEEDS:
        image, label = generate_case(seed, shape=SHAPE)
        write_image(image, folder / f"case{seed}.nii.gz")
        write_image(label, folder / f"case{seed}_label.nii.gz")
        if seed % 2:  # a positive click on the tumor, a negative one on its organ
            tumor = tumor_clicks_ras(image, label.array)[0]
            organ = image.kji_to_ras([centre_click(label.array == 1, image.spacing)])[0]
            write_markups(folder / f"case{seed}.mrk.json", np.stack([tumor, organ]), np.array([1, 0]))
    return folder


def inline_clicks(folder: Path, seed: int) -> list[tuple[int, list[float], str]]:
    """Lesion 1: the first tumor's centre; lesion 2: the organ's centre plus a negative click
    (RAS rounded to 0.1 um, as written in the manifest)."""
    image, label = read_image(folder / f"case{seed}.nii.gz"), read_image(folder / f"case{seed}_label.nii.gz").array
    tumor = tumor_clicks_ras(image, label)[0]
    organ = image.kji_to_ras([centre_click(label == 1, image.spacing)])[0]
    return [(lesion, [round(float(v), 4) for v in ras], sign)
            for lesion, ras, sign in ((1, tumor, "+"), (2, organ, "+"), (2, tumor, "-"))]


def as_text(clicks) -> str:
    """The CSV form: 'lesion:R,A,S:sign;...'."""
    return ";".join(f"{lesion}:{','.join(map(str, ras))}:{sign}" for lesion, ras, sign in clicks)


def as_json(clicks) -> list[dict]:
    return [{"lesion": lesion, "ras": ras, "label": sign} for lesion, ras, sign in clicks]


@pytest.fixture(scope="module")
def mixed_manifest(phantoms) -> Path:
    """CSV: even cases with inline clicks (two lesions), odd cases with markups files."""
    rows = [(f"case{seed}", f"case{seed}.nii.gz",
             f"case{seed}.mrk.json" if seed % 2 else as_text(inline_clicks(phantoms, seed)), f"case{seed}_label.nii.gz")
            for seed in SEEDS]
    path = phantoms / "mixed.csv"
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["id", "image", "prompts", "reference"])
        writer.writerows(rows)
    return path


def batch(*args) -> int:
    return main(["batch", *map(str, args), "--device", "cpu", "--quiet"])


def summary(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


def without_pynrrd_timestamp(data: bytes) -> bytes:
    """pynrrd writes '# on <time>(GMT).' into every header; everything else must be identical."""
    return re.sub(rb"\n# on [^\n]*\(GMT\)\.\n", b"\n", data, count=1)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, mixed_manifest, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("full") / "out"
    assert batch(mixed_manifest, "--out", out, "--model", tiny_model) == 0
    return out


def test_a_mixed_manifest_writes_every_output(full_run, phantoms):
    rows = summary(full_run)
    assert list(rows[0]) == ["id", "points", "lesions", "voxels", "volume_ml", "dice", "nsd", "seconds", "status", "error"]
    assert [row["id"] for row in rows] == [f"case{seed}" for seed in SEEDS]
    for seed, row in zip(SEEDS, rows):
        image = read_image(phantoms / f"case{seed}.nii.gz")
        assert row["status"] == "done" and row["error"] == ""
        assert (row["points"], row["lesions"]) == (("2", "1") if seed % 2 else ("3", "2"))
        segments, grid = read_segmentation(full_run / f"case{seed}.seg.nrrd")
        assert grid.same_grid(image)
        assert [s.name for s in segments] == [f"lesion {n}" for n in range(1, int(row["lesions"]) + 1)]
        assert [tuple(s.color) for s in segments] == [lesion_color(n) for n in range(1, len(segments) + 1)]
        union = np.logical_or.reduce([s.mask for s in segments])
        assert int(row["voxels"]) == int(union.sum())
        assert float(row["volume_ml"]) == pytest.approx(union.sum() * image.voxel_volume_ml, abs=1e-3)
        assert 0.0 <= float(row["dice"]) <= 1.0 and 0.0 <= float(row["nsd"]) <= 1.0
        assert float(row["seconds"]) > 0
    log = (full_run / "batch.log").read_text()
    assert all(f"case{seed}: done" in log for seed in SEEDS)
    assert log.count("segmenter ready") == 1  # one model load for the whole run
    # the phantoms' label images hold organ (1) and tumor (2), the manifest no reference_label
    assert all(f"WARNING case{seed}: reference {phantoms / f'case{seed}_label.nii.gz'} holds the labels 1, 2 "
               "and the manifest gives no reference_label" in log for seed in SEEDS)
    assert sorted(p.name for p in (full_run / ".state").iterdir()) == [f"case{seed}.json" for seed in SEEDS]


def test_slicer_loads_every_segmentation_on_the_input_grid(full_run, phantoms):
    slicer = pytest.importorskip("slicer")
    import vtk

    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    ras_from_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    for seed in SEEDS:
        image = read_image(phantoms / f"case{seed}.nii.gz")
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        node.SetAndObserveStorageNodeID(storage.GetID())
        storage.SetFileName(str(full_run / f"case{seed}.seg.nrrd"))
        assert storage.ReadData(node) == 1
        segmentation = node.GetSegmentation()
        assert segmentation.GetNumberOfSegments() == (1 if seed % 2 else 2)
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            assert segment.GetName() == f"lesion {index + 1}"
            np.testing.assert_allclose(segment.GetColor(), lesion_color(index + 1), atol=1e-6)
            labelmap = segment.GetRepresentation(labelmap_name)
            matrix = vtk.vtkMatrix4x4()
            labelmap.GetImageToWorldMatrix(matrix)
            ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
            np.testing.assert_allclose(ijk_to_ras, ras_from_lps @ image.ijk_to_lps, atol=1e-6)
            assert labelmap.GetExtent() == (0, SHAPE[2] - 1, 0, SHAPE[1] - 1, 0, SHAPE[0] - 1)


def test_a_stopped_run_resumed_gives_the_same_outputs(tmp_path, full_run, mixed_manifest, tiny_model):
    out = tmp_path / "out"
    assert batch(mixed_manifest, "--out", out, "--model", tiny_model, "--limit", "3") == 0
    assert sorted(p.name for p in out.glob("*.seg.nrrd")) == [f"case{seed}.seg.nrrd" for seed in SEEDS[:3]]
    assert [row["status"] for row in summary(out)] == ["done"] * 3 + ["pending"] * 2
    first_three = {p.name: p.stat().st_mtime_ns for p in out.glob("*.seg.nrrd")}
    killed = [out / ".case3.seg.nrrd.0123456789ab.tmp.seg.nrrd", out / ".state" / ".case3.json.ba9876543210.tmp.json"]
    for path in killed:  # what a run killed while writing leaves
        path.write_bytes(b"partial")

    assert batch(mixed_manifest, "--out", out, "--model", tiny_model, "--resume") == 0
    assert not any(path.exists() for path in killed)
    assert "removed 2 temporary file(s) an earlier, killed run left" in (out / "batch.log").read_text()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.seg.nrrd") if p.name in first_three} == first_three
    assert "5 case(s) in the manifest, 3 finished before (resume on), 2 to run now" in (out / "batch.log").read_text()
    for seed in SEEDS:
        name = f"case{seed}.seg.nrrd"
        resumed, uninterrupted = read_segmentation(out / name), read_segmentation(full_run / name)
        for a, b in zip(resumed[0], uninterrupted[0]):
            np.testing.assert_array_equal(a.mask, b.mask)
        assert without_pynrrd_timestamp((out / name).read_bytes()) == \
            without_pynrrd_timestamp((full_run / name).read_bytes())
    columns = ["id", "points", "lesions", "voxels", "volume_ml", "dice", "nsd", "status"]
    assert [[row[c] for c in columns] for row in summary(out)] == [[row[c] for c in columns] for row in summary(full_run)]

    # A damaged output is not "finished": --resume runs that case again.
    (out / "case1.seg.nrrd").write_bytes(b"damaged")
    assert batch(mixed_manifest, "--out", out, "--model", tiny_model, "--resume") == 0
    assert (out / "case1.seg.nrrd").read_bytes() != b"damaged"
    assert "5 case(s) in the manifest, 4 finished before (resume on), 1 to run now" in (out / "batch.log").read_text()


def last_run_line(out: Path) -> str:
    """The batch log's line that says how many cases the latest run found finished."""
    return [line for line in (out / "batch.log").read_text().splitlines() if "case(s) in the manifest" in line][-1]


def test_a_resumed_run_skips_only_cases_it_would_answer_the_same(tmp_path, mixed_manifest, tiny_model):
    """The 2D pathway's "auto" precision and the precision it resolves to on this machine are one
    identity; the other precision (what another CPU or a GPU runs) is not, so its --resume runs
    the cases again rather than mixing two precisions' answers in one folder."""
    own = resolve_slice_precision("auto")
    other = "fp32" if own == "bf16" else "bf16"
    out = tmp_path / "out"
    assert batch(mixed_manifest, "--out", out, "--model", tiny_model, "--limit", "2") == 0
    assert batch(mixed_manifest, "--out", out, "--model", tiny_model, "--slice-precision", own,
                 "--resume", "--limit", "1") == 0
    assert "5 case(s) in the manifest, 2 finished before (resume on), 1 to run now" in last_run_line(out)
    assert batch(mixed_manifest, "--out", out, "--model", tiny_model, "--slice-precision", other,
                 "--resume", "--limit", "1") == 0
    assert "5 case(s) in the manifest, 0 finished before (resume on), 1 to run now" in last_run_line(out)
    assert last_run_line(out).endswith(f"model local:{tiny_model.resolve()}:{file_sha256(tiny_model)[:16]}:cpu:{other}:3d")


def test_with_ray_the_identity_is_the_workers_device_not_this_machines(tiny_model):
    """Ray workers answer on a GPU each where --gpus-per-worker gives one (fp32 there, whether
    or not this machine has a GPU), else on their own CPUs, whose "auto" precision is theirs."""
    def identity(*options: str) -> str:
        argv = ["batch", "cases.csv", "--out", "out", "--model", str(tiny_model), *options]
        return local_identity(build_parser(argv).parse_args(argv), str(tiny_model))

    sha = file_sha256(tiny_model)[:16]
    assert identity("--ray", "auto", "--gpus-per-worker", "0.25").endswith(f"{sha}:cuda:fp32:3d")
    assert identity("--ray", "auto").endswith(f"{sha}:cpu:auto:3d")
    assert identity("--ray", "auto", "--slice-precision", "bf16").endswith(f"{sha}:cpu:bf16:3d")
    assert identity("--device", "cpu", "--click-pathway", "search").endswith(
        f"{sha}:cpu:{resolve_slice_precision('auto')}:search")


def test_a_reference_label_scores_one_label_without_a_warning(tmp_path, phantoms, tiny_model, capsys):
    manifest = tmp_path / "one.json"
    clicks = [{"lesion": 1, "ras": ras, "label": sign} for lesion, ras, sign in inline_clicks(phantoms, 0) if lesion == 1]
    entry = {"id": "case0", "image": str(phantoms / "case0.nii.gz"), "prompts": clicks,
             "reference": str(phantoms / "case0_label.nii.gz")}
    manifest.write_text(json.dumps([entry]))
    assert batch(manifest, "--out", tmp_path / "all", "--model", tiny_model) == 0
    assert "holds the labels 1, 2" in capsys.readouterr().err
    manifest.write_text(json.dumps([{**entry, "reference_label": TUMOR_LABEL}]))
    assert batch(manifest, "--out", tmp_path / "tumor", "--model", tiny_model) == 0
    assert "warning" not in capsys.readouterr().err
    dice_all, dice_tumor = (float(summary(tmp_path / name)[0]["dice"]) for name in ("all", "tumor"))
    assert dice_tumor != dice_all


def test_an_unreadable_image_is_recorded_and_the_other_cases_finish(tmp_path, phantoms, tiny_model):
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really a NIfTI file")
    cases = [
        {"id": "first", "image": str(phantoms / "case1.nii.gz"), "prompts": str(phantoms / "case1.mrk.json")},
        {"id": "broken", "image": "broken.nii.gz", "prompts": [{"lesion": 1, "ras": [0, 0, 0], "label": "+"}]},
        {"id": "outside", "image": str(phantoms / "case2.nii.gz"),
         "prompts": [{"lesion": 1, "ras": [5000, 0, 0], "label": "+"}]},
        {"id": "no_lesion", "image": str(phantoms / "case3.nii.gz"), "prompts": str(phantoms / "case3.mrk.json"),
         "reference": str(phantoms / "case3_label.nii.gz"), "reference_label": 7},
        {"id": "last", "image": str(phantoms / "case3.nii.gz"), "prompts": str(phantoms / "case3.mrk.json")},
    ]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(cases))
    out = tmp_path / "out"
    assert batch(manifest, "--out", out, "--model", tiny_model) == 1
    rows = {row["id"]: row for row in summary(out)}
    assert [row["status"] for row in rows.values()] == ["done", "failed", "failed", "failed", "done"]
    assert f"cannot read {tmp_path / 'broken.nii.gz'}" in rows["broken"]["error"]
    assert "lesion 1: click R,A,S = [5000.0, 0.0, 0.0] mm lies outside the image" in rows["outside"]["error"]
    assert "case3_label.nii.gz holds no label 7 voxel inside the image" in rows["no_lesion"]["error"]
    assert sorted(p.name for p in out.glob("*.seg.nrrd")) == ["first.seg.nrrd", "last.seg.nrrd"]
    assert "broken: failed" in (out / "batch.log").read_text()
    # --resume runs the failed cases again (and only them)
    assert batch(manifest, "--out", out, "--model", tiny_model, "--resume") == 1
    assert "5 case(s) in the manifest, 2 finished before (resume on), 3 to run now" in (out / "batch.log").read_text()


def moved_copy(image: Volume, label: Volume, angles_deg, shift_mm) -> tuple[Volume, Volume]:
    """The case rotated about its centre and shifted, resampled onto its own grid (label: nearest)."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter(tuple(image.kji_to_lps([(np.array(image.shape) - 1) / 2])[0]))
    transform.SetRotation(*np.deg2rad(angles_deg))
    transform.SetTranslation(tuple(float(v) for v in shift_mm))
    moved = sitk.Resample(image.to_sitk(), image.to_sitk(), transform, sitk.sitkLinear, -1000.0, sitk.sitkInt16)
    moved_label = sitk.Resample(label.to_sitk(), label.to_sitk(), transform, sitk.sitkNearestNeighbor, 0)
    return Volume.from_sitk(moved), Volume.from_sitk(moved_label)


@pytest.mark.parametrize("seed", [3, 6])
def test_propagated_clicks_land_inside_the_tumor_of_a_moved_copy(tmp_path, tiny_model, seed):
    image, label = generate_case(seed, shape=(40, 96, 96))
    copy, copy_label = moved_copy(image, label, angles_deg=(8, -10, 14), shift_mm=(12, -10, 8))
    for name, volume in (("base", image), ("follow", copy), ("follow_label", copy_label)):
        write_image(volume, tmp_path / f"{name}.nii.gz")
    clicks = tumor_clicks_ras(image, label.array)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([
        {"id": "base", "image": "base.nii.gz",
         "prompts": [{"lesion": n, "ras": ras.tolist(), "label": "+"} for n, ras in enumerate(clicks, 1)]},
        {"id": "follow", "image": "follow.nii.gz", "reference": "follow_label.nii.gz", "reference_label": 2},
    ]))
    out = tmp_path / "out"
    assert batch(manifest, "--out", out, "--model", tiny_model, "--propagate-from", "base") == 0
    record = OutputFolder(out).read_record("follow")
    assert record.status == "done" and record.lesions == len(clicks)
    for lesion in record.clicks:
        kji = np.rint(copy.ras_to_kji(np.array(lesion["ras"]))).astype(int)
        assert [int(copy_label.array[tuple(p)]) for p in kji] == [TUMOR_LABEL], lesion
    assert "follow: registered base onto it: rigid MI" in (out / "batch.log").read_text()
    assert len(read_segmentation(out / "follow.seg.nrrd")[0]) == len(clicks)


def test_prompts_from_a_prior_mask_give_one_lesion_per_component(tmp_path, phantoms, tiny_model):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,image,last_study,prior_label\n"
                        f"a,{phantoms / 'case2.nii.gz'},{phantoms / 'case2_label.nii.gz'},2\n")
    out = tmp_path / "out"
    assert batch(manifest, "--out", out, "--model", tiny_model, "--prompts-from-mask", "last_study") == 0
    label = read_image(phantoms / "case2_label.nii.gz")
    tumors = ndimage.label(label.array == TUMOR_LABEL, structure=np.ones((3, 3, 3)))[1]
    record = OutputFolder(out).read_record("a")
    assert record.lesions == tumors and len(read_segmentation(out / "a.seg.nrrd")[0]) == tumors
    for lesion in record.clicks:
        kji = np.rint(label.ras_to_kji(np.array(lesion["ras"]))).astype(int)
        assert [int(label.array[tuple(p)]) for p in kji] == [TUMOR_LABEL]


def test_boxes_in_a_manifest_segment_their_lesions_as_sam3d_segment_does(tmp_path, phantoms, tiny_box_model):
    """A lesion given as a box, and one as a box with a negative click: each segment is what the
    engine gives for the same box and click in a fresh session, its ID follows its lesion number,
    and the record keeps the box."""
    from sam3d.engine.predictor import Predictor
    from sam3d.engine.session import segment

    image, label = read_image(phantoms / "case0.nii.gz"), read_image(phantoms / "case0_label.nii.gz").array
    tumor = np.argwhere(label == TUMOR_LABEL)
    box_kji = np.array([tumor.min(axis=0), tumor.max(axis=0)], dtype=float)
    box_ras = [[round(float(v), 4) for v in corner] for corner in image.kji_to_ras(box_kji)]
    inside = image.kji_to_ras([tumor[len(tumor) // 2]])[0]
    negative = [round(float(v), 4) for v in inside]
    manifest = tmp_path / "boxes.json"
    manifest.write_text(json.dumps([{"id": "a", "image": str(phantoms / "case0.nii.gz"), "prompts": [
        {"lesion": 1, "box": box_ras},
        {"lesion": 3, "box": box_ras}, {"lesion": 3, "ras": negative, "label": "-"}]}]))
    out = tmp_path / "out"
    assert batch(manifest, "--out", out, "--model", tiny_box_model) == 0
    segments, _ = read_segmentation(out / "a.seg.nrrd")
    predictor = Predictor.load(tiny_box_model, device="cpu")
    box = image.ras_to_kji(np.array(box_ras))
    expected = [segment(predictor, image.array, image.spacing, np.zeros((0, 3)), [], box_kji=box),
                segment(predictor, image.array, image.spacing, image.ras_to_kji(np.array([negative])), [0],
                        box_kji=box)]
    assert [(s.name, s.segment_id) for s in segments] == [("lesion 1", "Segment_1"), ("lesion 3", "Segment_3")]
    for found, wanted in zip(segments, expected):
        assert wanted.any()
        np.testing.assert_array_equal(found.mask, wanted)
    record = OutputFolder(out).read_record("a")
    np.testing.assert_allclose(record.clicks[0]["box_ras"], box_ras, atol=1e-6)


def test_the_server_backend_gives_the_in_process_results(tmp_path, phantoms, full_run, tiny_model):
    """Same masks as in-process; a case the server refuses is recorded with the server's message."""
    from server_helpers import running_server

    image, _ = generate_case(0, shape=(40, 96, 96))  # more voxels than this server takes
    write_image(image, tmp_path / "big.nii.gz")
    centre = image.kji_to_ras([(np.array(image.shape) - 1) / 2])[0].tolist()
    cases = [
        {"id": "case0", "image": str(phantoms / "case0.nii.gz"), "prompts": as_json(inline_clicks(phantoms, 0))},
        {"id": "case1", "image": str(phantoms / "case1.nii.gz"), "prompts": str(phantoms / "case1.mrk.json")},
        {"id": "big", "image": "big.nii.gz", "prompts": [{"lesion": 1, "ras": centre, "label": "+"}]},
    ]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(cases))
    out = tmp_path / "out"
    with running_server("--model", str(tiny_model), "--device", "cpu", "--max-voxels", str(int(np.prod(SHAPE))),
                        env={"OMP_NUM_THREADS": "1", "SAM3D_TEST_THREADS": "1"}) as url:
        assert batch(manifest, "--out", out, "--server", url) == 1
    # What decides the server's answers goes into the identity --resume compares.
    assert last_run_line(out).endswith(f"model server:tiny-random:tiny:{file_sha256(tiny_model)[:16]}:cpu:"
                                       f"{resolve_slice_precision('auto')}:3d")
    rows = summary(out)
    assert [row["status"] for row in rows] == ["done", "done", "failed"]
    assert "voxels" in rows[2]["error"] and "Traceback" not in rows[2]["error"], rows[2]["error"]
    for seed in SEEDS[:2]:
        remote, local = (read_segmentation(folder / f"case{seed}.seg.nrrd")[0] for folder in (out, full_run))
        assert [s.name for s in remote] == [s.name for s in local]
        for a, b in zip(remote, local):
            np.testing.assert_array_equal(a.mask, b.mask)
    assert batch(manifest, "--out", out, "--server", "http://127.0.0.1:9") == 2  # nothing listens there


def test_the_encoder_is_compiled_by_default_from_twenty_cases_in_process_and_on_ray_when_asked(tmp_path, full_run):
    """`--compile` / `--no-compile`; by default on from COMPILE_MIN_CASES cases in this process
    (Ray workers only when asked). The log says what happened: a model without a TinyViT has
    nothing to compile. (The compiled default model: test_serve_box.py's search test.)"""
    from sam3d.batch.commands import COMPILE_MIN_CASES, compile_wanted

    assert not compile_wanted(None, COMPILE_MIN_CASES - 1, on_ray=False)
    assert compile_wanted(None, COMPILE_MIN_CASES, on_ray=False)
    assert not compile_wanted(None, 10 * COMPILE_MIN_CASES, on_ray=True)
    assert compile_wanted(True, 1, on_ray=True) and not compile_wanted(False, 10 * COMPILE_MIN_CASES, on_ray=False)
    assert re.search(r"segmenter ready in [\d.]+ s; encoder compiled: not applicable", (full_run / "batch.log").read_text())
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"id": "a", "image": "a.nii.gz", "prompts": [{"lesion": 1, "ras": [0, 0, 0], "label": "+"}]}]))
    write_image(generate_case(0, shape=SHAPE)[0], tmp_path / "a.nii.gz")
    assert batch(manifest, "--out", tmp_path / "out", "--server", "http://127.0.0.1:9", "--compile") == 2
    assert not (tmp_path / "out").exists()


def test_without_a_cxx_compiler_the_compile_fails_and_the_batch_runs_uncompiled(tmp_path):
    """The real failure, not a stand-in: `sam3d batch --compile` with the default model, no C++
    compiler ($CXX names none) and an empty torch compile cache. The log names the failure, and
    the case is segmented as without --compile (the encoder as built)."""
    k, j, i = np.mgrid[:24, :48, :48]
    ball = (k - 12) ** 2 + (j - 24) ** 2 + (i - 24) ** 2 <= 49
    array = np.where(ball, 200.0, 20.0).astype(np.float32)
    image = write_image(Volume(array, spacing=(1.0, 1.0, 1.0)), tmp_path / "ball.nii.gz")
    (tmp_path / "cases.csv").write_text(f'id,image,prompts\nball,{image},"1:-24,-24,12:+"\n')
    env = {"CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    outputs = {}
    for flag in ("--compile", "--no-compile"):
        out = tmp_path / flag.strip("-")
        run = run_sam3d("batch", str(tmp_path / "cases.csv"), "--out", str(out), "--model", "default",
                        "--device", "cpu", "--quiet", flag, env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        outputs[flag] = read_segmentation(out / "ball.seg.nrrd")[0][0].mask
    log = (tmp_path / "compile" / "batch.log").read_text()
    assert re.search(r"encoder compiled: no \(\w*Error: .+\); running it uncompiled; 2D pathway in (fp32|bf16)", log), log
    assert "encoder compiled: off" in (tmp_path / "no-compile" / "batch.log").read_text()
    np.testing.assert_array_equal(outputs["--compile"], outputs["--no-compile"])
    assert outputs["--compile"][12, 24, 24]
