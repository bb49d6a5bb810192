"""The default lite model trained at scale where a GPU is lent, and its development figures beside
the default's, in one run: what the 2-core CPU cannot do (docs/BENCHMARKS.md, "Training at scale,
prepared for a GPU").

    bash benchmarks/gpu_train.sh             # on the GPU machine (packages: as gpu_check.sh)
    python benchmarks/gpu_train.py --tiny    # dry run on a CPU: a few small cases, a few steps

1. Training cases, written on all the machine's cores: the four training designs (synthetic,
   subtle, chest, complex chest) on seeds no training stage has used, linked into one MSD folder.
2. `sam3d train default_lite_scale_gpu` from the default: crops drawn afresh and encoded every
   step, batch 8, bf16; stopped after --train-seconds at the latest (its checkpoints are written
   every val_every steps, so a stopped run keeps its last one). Meanwhile three more processes
   write the development sets (the unseen design dev21, complex chest dev91, chest dev2: the
   CPU's development sets, case for case); the real MRI cases join where the call carries
   data/real_mri.
3. `sam3d average` of the default and the run's last checkpoint, equal weights.
4. `sam3d evaluate --clicks N --seed 0 --no-classical` of the default, the run and the average on
   each development set, several at once, then `sam3d compare` of each against the default.

Everything lands under --out: the run's log and checkpoints, the average, each report, and
gpu_train.md with the tables. The development sets decide; no held-out set is run here.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# design -> (cases, first seed) of the training mix; each shard of SHARD cases is its own seed
TRAINING = {"synth": (160, 8100), "subtle": (40, 8200), "chest": (40, 8300), "chest-complex": (60, 8400)}
DEVELOPMENT = {"dev21": ("phantom", 24, 21), "cc_dev91": ("chest-complex", 24, 91), "chest_dev2": ("chest", 16, 8)}
SHARD = 10
REAL_MRI = ROOT / "data" / "real_mri"  # carried by the device call where wanted (a copy of real-mri-dev)


def write_shard(design: str, cases: int, seed: int, out: str) -> str:
    """One seed's cases of ``design`` (a worker process)."""
    from sam3d.data.phantoms import write_dataset

    write_dataset(out, cases=cases, seed=seed, design=design, overwrite=True)
    return out


def write_training_mix(data: Path, tiny: bool) -> Path:
    """The training cases, in shards of SHARD cases on all cores, linked into one MSD folder."""
    jobs = []  # (design, cases, seed, folder)
    for design, (cases, seed) in TRAINING.items():
        cases = 2 if tiny else cases
        for shard in range(-(-cases // SHARD)):
            jobs.append((design, min(SHARD, cases - shard * SHARD), seed + shard, data / f"{design}_{seed + shard}"))
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(write_shard, *zip(*[(d, n, s, str(f)) for d, n, s, f in jobs])))
    mix = data / "mix_scale"
    for folder in ("imagesTr", "labelsTr"):
        (mix / folder).mkdir(parents=True, exist_ok=True)
    for design, _, seed, folder in jobs:
        for sub in ("imagesTr", "labelsTr"):
            for path in sorted((folder / sub).iterdir()):
                (mix / sub / f"{design}_{seed}_{path.name}").symlink_to(path.resolve())
    description = json.loads((jobs[0][3] / "dataset.json").read_text())
    description.update(name="mix_scale", numTraining=len(list((mix / "labelsTr").iterdir())))
    (mix / "dataset.json").write_text(json.dumps(description, indent=1))
    print(f"{description['numTraining']} training cases written in {time.perf_counter() - start:.0f} s", flush=True)
    return mix


def start_development_sets(data: Path, tiny: bool) -> tuple[ProcessPoolExecutor, dict[str, Path], list]:
    """The development sets, one process each, written while training runs -> (pool, set -> folder,
    futures)."""
    pool = ProcessPoolExecutor(max_workers=len(DEVELOPMENT))
    folders = {name: data / name for name in DEVELOPMENT}
    futures = [pool.submit(write_shard, design, 2 if tiny else cases, seed, str(folders[name]))
               for name, (design, cases, seed) in DEVELOPMENT.items()]
    return pool, folders, futures


def sam3d(*args: str, timeout: float | None = None, log: Path | None = None) -> int:
    """Run `python -m sam3d ARGS`; its output goes to ``log`` (else this process's)."""
    command = [sys.executable, "-m", "sam3d", *args]
    print("$ sam3d " + " ".join(args), flush=True)
    with open(log, "w") if log else contextlib.nullcontext() as sink:
        try:
            return subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT if log else None,
                                  timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            print(f"stopped after {timeout:.0f} s", flush=True)
            return 124


def train(mix: Path, out: Path, args: argparse.Namespace) -> Path | None:
    """The run's last checkpoint (None where it wrote none)."""
    overrides = ["--set", f"steps_per_epoch={args.steps}", "--set", f"val_every={args.val_every}",
                 "--set", f"centre_click_prob={args.centre_click_prob}"]
    if args.tiny:
        overrides += ["--set", "batch_size=1", "--set", "num_workers=0", "--set", "val_cases=1",
                      "--set", "log_every=1", "--set", "split_fractions=[0.9, 0.1, 0.0]"]
    code = sam3d("train", "default_lite_scale_gpu", "--data", str(mix), "--out", str(out / "run"), "--no-progress",
                 *overrides, timeout=args.train_seconds, log=out / "train.log")
    last = out / "run" / "last.pt"
    print(f"training exit {code}; last checkpoint {'written' if last.is_file() else 'missing'}", flush=True)
    return last if last.is_file() else None


def evaluate_all(models: dict[str, str], development: dict[str, Path], out: Path, args: argparse.Namespace) -> dict:
    """Each model on each development set, ``args.parallel`` at once -> {(model, set): report path}."""
    jobs = {(model, name): out / "eval" / f"{model}_{name}" for model in models for name in development}

    def run(key):
        model, name = key
        sam3d("evaluate", "--model", models[model], "--data", str(development[name]), "--split", "all",
              "--target-label", "tumor", "--clicks", str(args.clicks), "--seed", "0", "--no-classical",
              "--out", str(jobs[key]), log=jobs[key].with_suffix(".log"))
        return key

    (out / "eval").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        list(pool.map(run, jobs))
    return {key: folder / "report.json" for key, folder in jobs.items() if (folder / "report.json").is_file()}


def training_line(out: Path) -> str:
    """How far the run got: its last logged step, loss, samples per second and time."""
    log = out / "run" / "train_log.csv"
    rows = list(csv.DictReader(open(log))) if log.is_file() else []
    if not rows:
        return "training: no step logged"
    last = rows[-1]
    return (f"training: {last['step']} steps in {float(last['elapsed_s']):.0f} s, {float(last['samples_per_s']):.1f} "
            f"samples/s, last loss {float(last['loss']):.3f}, peak memory {float(last['peak_memory_mb']):.0f} MB")


def tables(reports: dict, models: list[str], development: dict[str, Path], out: Path) -> str:
    """Mean Dice by click of each model on each set, and each model's paired difference from the
    default (`sam3d compare`)."""
    lines = [training_line(out), "", "| set | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for name in development:
        cells = []
        for model in models:
            path = reports.get((model, name))
            cells.append(", ".join(f"{d:.3f}" for d in json.loads(path.read_text())["dice_by_click"])
                         if path else "failed")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for model in models[1:]:
        for name in development:
            before, after = reports.get(("default", name)), reports.get((model, name))
            if before and after:
                log = out / "eval" / f"compare_{model}_{name}.txt"
                sam3d("compare", str(before), str(after), log=log)
                lines += ["", f"{model} against the default on {name}:", "", "```", log.read_text().strip(), "```"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_train_out"))
    parser.add_argument("--steps", type=int, default=3000, help="training steps (batch 8)")
    parser.add_argument("--val-every", type=int, default=250, help="steps between checkpoints")
    parser.add_argument("--train-seconds", type=float, default=330, help="training stops after this at the latest")
    parser.add_argument("--centre-click-prob", type=float, default=0.0,
                        help="share of one-click samples clicked at the crop's centre (TrainConfig.centre_click_prob)")
    parser.add_argument("--clicks", type=int, default=1, help="clicks of the evaluation protocol")
    parser.add_argument("--parallel", type=int, default=4, help="evaluations at once")
    parser.add_argument("--tiny", action="store_true", help="a dry run on a CPU: few cases, few steps")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.val_every, args.train_seconds, args.parallel = 2, 2, 900, 2
    out = Path(args.out).resolve()
    data = out / "data" if args.tiny else Path("/tmp/gpu_train_data")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    mix = write_training_mix(data, args.tiny)
    pool, development, writing = start_development_sets(data, args.tiny)
    last = train(mix, out, args)
    for future in writing:
        future.result()
    pool.shutdown()
    if REAL_MRI.is_dir():
        development["real_mri"] = REAL_MRI
    models = {"default": "default"}
    if last is not None:
        models["scale"] = str(last)
        if sam3d("average", "default", str(last), "--weights", "0.5,0.5", "--name", "default-lite-scale-soup",
                 "--out", str(out / "soup.pt")) == 0:
            models["soup"] = str(out / "soup.pt")
    reports = evaluate_all(models, development, out, args)
    summary = tables(reports, list(models), development, out)
    (out / "gpu_train.md").write_text(summary + "\n")
    print(summary)
    print(f"\nall in {time.perf_counter() - started:.0f} s", flush=True)
    return 0 if len(models) == 3 and len(reports) == len(models) * len(development) else 1


if __name__ == "__main__":
    sys.exit(main())
