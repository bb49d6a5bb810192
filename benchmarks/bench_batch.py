"""Batch throughput: cases per minute of `sam3d batch` in-process on this machine, and with
`--ray` on Ray workers. Prints Markdown tables.

    python benchmarks/bench_batch.py                      # the bundled default model, 6 phantoms
    python benchmarks/bench_batch.py --cases 10 --threads 2
    python benchmarks/bench_batch.py --cases 12 --threads 2 --compile   # the encoder compiled first
    python benchmarks/bench_batch.py --model tiny-random  # a random-weight tiny model (speed only)
    python benchmarks/bench_batch.py --cases 12 --threads 1 --ray local --workers 1,2
    python benchmarks/bench_batch.py --ray auto --workers 4,8 --gpus-per-worker 0.25 --device cuda

The cases are generated phantoms at their usual size (48-64 x 128-160 x 128-160 voxels) with one
lesion per tumor (1-3 per case), each clicked once at its most interior voxel, written to a
temporary folder with a manifest and run through the same code as `sam3d batch` (one model load,
then every case: read, segment each lesion, write the .seg.nrrd, score against the phantom's
label). Model loading is timed apart from the cases.

With ``--ray ADDRESS --workers N,M,...`` the same manifest then runs on N, M, ... Ray workers
(`--cpus-per-worker`, `--gpus-per-worker` as in `sam3d batch`); the second table gives cases per
minute once the workers are ready and end to end (Ray start, worker start and model loads, Ray
shutdown), the scaling over the first worker count, and whether every .seg.nrrd is
byte-identical to the in-process run's.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from sam3d.batch.manifest import read_manifest
from sam3d.batch.runner import BatchOptions, InProcess, run_batch
from sam3d.batch.segmenters import LocalSegmenter
from sam3d.batch.state import OutputFolder
from sam3d.data.clicks import centre_click
from sam3d.data.io import write_image
from sam3d.data.phantoms import TUMOR_LABEL, case_seed, generate_case
from sam3d.engine.predictor import Predictor


def write_cases(folder: Path, cases: int, seed: int) -> tuple[Path, int]:
    """Phantoms + a JSON manifest with one positive click per tumor; returns (manifest, lesions)."""
    entries, lesions = [], 0
    for index in range(cases):
        image, label = generate_case(case_seed(seed, index))
        case_id = f"phantom_{index:03d}"
        write_image(image, folder / f"{case_id}.nii.gz")
        write_image(label, folder / f"{case_id}_label.nii.gz")
        components, count = ndimage.label(label.array == TUMOR_LABEL)
        clicks = [image.kji_to_ras([centre_click(components == n, image.spacing)])[0] for n in range(1, count + 1)]
        lesions += count
        entries.append({"id": case_id, "image": f"{case_id}.nii.gz", "reference": f"{case_id}_label.nii.gz",
                        "reference_label": TUMOR_LABEL,
                        "prompts": [{"lesion": n, "ras": ras.tolist(), "label": "+"} for n, ras in enumerate(clicks, 1)]})
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps(entries, indent=1))
    return manifest, lesions


def tiny_random_checkpoint(folder: Path) -> Path:
    from sam3d.data.intensity import PRESETS
    from sam3d.model.checkpoint import save_checkpoint
    from sam3d.model.config import get_config
    from sam3d.model.sam3d import Sam3D

    torch.manual_seed(0)
    return save_checkpoint(folder / "tiny.pt", Sam3D(get_config("tiny")), PRESETS["soft_tissue"], "tiny-random")


def load_segmenter(spec: str, device: str) -> LocalSegmenter:
    """What every Ray worker builds (pickled with its arguments)."""
    return LocalSegmenter(Predictor.load(spec, device=device))


def ray_table(cases: list, folder: Path, spec: str, args: argparse.Namespace, in_process: tuple[float, float],
              reference: Path) -> list[tuple[str, ...]]:
    """One row per worker count: throughput of the same manifest on Ray workers."""
    from sam3d.batch.cluster import RayOptions, RayRunner

    work_s, total_s = in_process
    rows = [("in-process", "-", f"{args.threads}", f"{len(cases) / work_s * 60:.1f}", f"{len(cases) / total_s * 60:.1f}",
             "-", "-")]
    first = None
    for count in args.workers:
        runner = RayRunner(RayOptions(args.ray, count, args.cpus_per_worker, args.gpus_per_worker))
        out = folder / f"ray_{count}"
        start = time.perf_counter()
        report = run_batch(cases, OutputFolder(out), functools.partial(load_segmenter, spec, args.device),
                           f"bench:{spec}", BatchOptions(progress=False), runner)
        total = time.perf_counter() - start
        if report.failed:
            raise RuntimeError(f"{len(report.failed)} case(s) failed on Ray: see {out / 'batch.log'}")
        rate = len(cases) / runner.work_seconds * 60
        first = first or (count, rate)
        same = all((out / p.name).read_bytes() == p.read_bytes() for p in reference.glob("*.seg.nrrd"))
        rows.append((f"ray {args.ray}", str(count), f"{max(1, int(args.cpus_per_worker))}"
                     + (f", {args.gpus_per_worker:g} GPU" if args.gpus_per_worker else ""),
                     f"{rate:.1f}", f"{len(cases) / total * 60:.1f}", f"{rate / first[1]:.2f}x over {first[0]}",
                     "yes" if same else "NO"))
    return rows


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[n]) for row in [header, *rows]) for n in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default', a checkpoint path, or 'tiny-random'")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (in-process)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the lite model's TinyViT first, as `sam3d batch --compile` does (in-process)")
    parser.add_argument("--ray", default=None, metavar="ADDRESS", help="also run on Ray: local, auto or ray://HOST:PORT")
    parser.add_argument("--workers", default="1,2", type=lambda text: [int(n) for n in text.split(",")],
                        help="Ray worker counts to measure, e.g. 1,2")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench_batch_") as temp:
        folder = Path(temp)
        manifest, lesions = write_cases(folder, args.cases, args.seed)
        spec = tiny_random_checkpoint(folder) if args.model == "tiny-random" else args.model
        start = time.perf_counter()
        try:
            predictor = Predictor.load(spec, device=args.device)
        except ValueError as error:  # CheckpointError: e.g. the default model is not there yet
            print(f"bench_batch: {error}", file=sys.stderr)
            return 2
        load_s = time.perf_counter() - start
        compile_s = None
        if args.compile:
            compile_s, failure = predictor.try_compile_encoder()
            if compile_s is None:
                print(f"bench_batch: --compile: {failure}", file=sys.stderr)
                return 2
        segmenter = LocalSegmenter(predictor)
        cases, runner = read_manifest(manifest), InProcess()
        report = run_batch(cases, OutputFolder(folder / "out"), lambda: segmenter, f"bench:{spec}",
                           BatchOptions(progress=False), runner)
        in_process = (runner.work_seconds, report.seconds + load_s)
        scaling = ray_table(cases, folder, str(spec), args, in_process, folder / "out") if args.ray else None
    done = [row for row in report.rows if row["status"] == "done"]
    if len(done) != args.cases:
        print(f"bench_batch: {args.cases - len(done)} case(s) failed: "
              + "; ".join(f"{r['id']}: {r['error']}" for r in report.rows if r["status"] != "done"), file=sys.stderr)
        return 1
    seconds = [float(row["seconds"]) for row in done]
    dice = [float(row["dice"]) for row in done]
    rows = [
        ("model", f"{predictor.name} ({predictor.config.name}, crop {predictor.config.crop_size}^3 "
                  f"at {predictor.config.crop_spacing_mm:g} mm)"),
        ("device", f"{args.device}, {args.threads} torch thread(s), {platform.processor() or platform.machine()}"),
        ("cases / lesions / clicks", f"{args.cases} / {lesions} / {sum(int(r['points']) for r in done)}"),
        ("model load (once per run)", f"{load_s:.2f} s"),
        ("encoder compile (once per run)", "off" if compile_s is None else f"{compile_s:.1f} s"),
        ("seconds per case: mean / median / max", f"{statistics.mean(seconds):.2f} / "
                                                  f"{statistics.median(seconds):.2f} / {max(seconds):.2f}"),
        ("cases / minute (cases only)", f"{len(done) / report.seconds * 60:.1f}"),
        ("cases / minute (with model load and compile)",
         f"{len(done) / (report.seconds + load_s + (compile_s or 0.0)) * 60:.1f}"),
        ("Dice mean (min..max)", f"{np.mean(dice):.3f} ({min(dice):.3f}..{max(dice):.3f})"),
    ]
    print_table(("sam3d batch", "value"), rows)
    if scaling:
        print()
        print_table(("backend", "workers", "threads / worker", "cases / min (workers ready)", "cases / min (end to end)",
                     "scaling", "same .seg.nrrd bytes"), scaling)
    return 0


if __name__ == "__main__":
    sys.exit(main())
