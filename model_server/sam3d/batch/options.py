"""The command-line options that choose a segmenter (``segmenters``): the engine in this process
or a running server. Shared by `sam3d batch` and `sam3d segment`; imports nothing heavy, so the
parsers stay quick to build."""

from __future__ import annotations

import argparse

from ..engine.choices import CLICK_PATHWAYS, SLICE_PRECISION_HELP, SLICE_PRECISIONS
from ..errors import CLIError


def add_segmenter_options(parser: argparse.ArgumentParser, timeout: float) -> None:
    """--server, --api-key, --timeout (default ``timeout`` seconds), --model, --sam-checkpoint, --device,
    --click-pathway, --slice-precision."""
    parser.add_argument("--server", default=None, metavar="URL",
                        help="URL of a running `sam3d serve`; default: the engine in this process")
    parser.add_argument("--api-key", default=None, help="the server's API key (with --server)")
    parser.add_argument("--timeout", type=float, default=timeout,
                        help=f"seconds per server request (default {timeout:g})")
    parser.add_argument("--model", default="default",
                        help="in-process model: 'default' (the bundled lite model), 'small-phantoms' "
                             "(the fast phantom-trained one) or a checkpoint path")
    parser.add_argument("--sam-checkpoint", default=None, help="SAM's sam_vit_b_01ec64.pth (vit_b models)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the in-process model runs (default auto: cuda when available)")
    parser.add_argument("--click-pathway", default="3d", choices=CLICK_PATHWAYS,
                        help="who answers a lone first click in-process (a server uses its own): 3d (default) = "
                             "the 3D model; search = LiteMedSAM's 2D pathway from the box that fits the click's "
                             "slice best (better on real images, seconds slower on a CPU); gated = the 3D "
                             "model, replaced by the search's mask where the two agree")
    parser.add_argument("--slice-precision", default="auto", choices=SLICE_PRECISIONS,
                        help="in-process (a server uses its own): " + SLICE_PRECISION_HELP)


def check_segmenter_options(args: argparse.Namespace) -> None:
    """CLIError for options that do not go together: --click-pathway and --slice-precision choose
    for the in-process model, a server answers as it was started."""
    if args.server and args.click_pathway != "3d":
        raise CLIError(f"--click-pathway {args.click_pathway} goes with the in-process model; a server answers "
                       f"first clicks as it was started (sam3d serve --click-pathway {args.click_pathway})")
    if args.server and args.slice_precision != "auto":
        raise CLIError(f"--slice-precision {args.slice_precision} goes with the in-process model; a server runs "
                       f"as it was started (sam3d serve --slice-precision {args.slice_precision})")
