"""`sam3d phantoms`: write a synthetic dataset in the MSD / nnU-Net raw layout (imagesTr/,
labelsTr/, dataset.json), with one positive click per tumor for each case (clicksTr/<case>.mrk.json,
Slicer markups, one point list per tumor) and manifest.json, a `sam3d batch` manifest of every case."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from ..errors import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phantoms",
        description=__doc__,
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset folder to write")
    parser.add_argument("--cases", type=int, default=20, metavar="N", help="number of cases (default 20)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    parser.add_argument("--design", default="phantom", choices=("phantom", "synth", "subtle", "chest", "chest-complex"),
                        help="phantom: CT phantoms of abdominal tumors (default); synth: domain-randomised "
                             "lesions in varied surroundings, CT- and MRI-like (training data for real scans); subtle: CT-like "
                             "lesions only 8-40 HU off their surroundings, beside air; "
                             "chest: whole chest CTs (512 x 512, 2.5-5 mm slices) with one lung tumour; "
                             "chest-complex: the same cases with vessels and spicules at the tumour, necrosis or "
                             "a cavity, atelectasis or effusion against it, kernel-shaped noise and scanner padding")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset already in DIR (its phantom_* cases and dataset.json)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .phantoms import write_dataset

    if args.cases < 1:
        raise CLIError(f"--cases must be at least 1, got {args.cases}")
    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {args.out} is a file; give a folder")
    if (args.out / "dataset.json").exists() and not args.overwrite:
        raise CLIError(f"{args.out} already holds a dataset (dataset.json); choose an empty folder or add --overwrite")
    with tqdm(total=args.cases, desc="phantoms", unit="case") as bar:
        try:
            out = write_dataset(args.out, args.cases, args.seed, overwrite=args.overwrite,
                                progress=lambda index: bar.update(1), design=args.design)
        except OSError as error:
            raise CLIError(f"cannot write to {args.out}: {error}") from None
    print(f"wrote {args.cases} cases (seed {args.seed}) to {out}: imagesTr/, labelsTr/, clicksTr/, dataset.json, "
          f"manifest.json (try: sam3d batch {out / 'manifest.json'} --out results)")
    return 0
