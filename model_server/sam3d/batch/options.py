"""The command-line options that choose a segmenter (``segmenters``): the engine in this process
or a running server. Shared by `sam3d batch` and `sam3d segment`; imports nothing heavy, so the
parsers stay quick to build."""

from __future__ import annotations

import argparse


def add_segmenter_options(parser: argparse.ArgumentParser, timeout: float) -> None:
    """--server, --api-key, --timeout (default ``timeout`` seconds), --model, --sam-checkpoint, --device."""
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
