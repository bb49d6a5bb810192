"""The real MRI development cases (../shared/data/real-mri-dev) as an MSD / nnU-Net folder that
`sam3d evaluate` reads (label 1 = tumor), without copying the image data: links to the files.

    python benchmarks/real_mri.py OUT_DIR [--source DIR]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-mri-dev"


def prepare(out_dir: Path, source: Path = DEFAULT_SOURCE) -> Path:
    """Write OUT_DIR/imagesTr, labelsTr (symbolic links) and dataset.json; return OUT_DIR."""
    images = sorted(source.glob("*_image.nrrd"))
    if not images:
        raise SystemExit(f"no *_image.nrrd in {source}; give --source")
    for folder in ("imagesTr", "labelsTr"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for image in images:
        case = image.name[: -len("_image.nrrd")]
        for link, target in ((out_dir / "imagesTr" / f"{case}_0000.nrrd", image),
                             (out_dir / "labelsTr" / f"{case}.nrrd", source / f"{case}_label.nrrd")):
            if not link.exists():
                os.symlink(target.resolve(), link)
    (out_dir / "dataset.json").write_text(json.dumps({
        "name": "real-mri-dev", "labels": {"background": 0, "tumor": 1}, "file_ending": ".nrrd",
        "channel_names": {"0": "MR"}, "numTraining": len(images)}, indent=2))
    return out_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    args = parser.parse_args()
    print(prepare(args.out, args.source))
