"""The `sam3d` console script: one sub-command per job, each registered by its own package."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import CLIError

# sub-command name -> module that provides `register(subparsers)`; the module's parser sets
# `func` (called with the parsed args, returns an exit status). Imported lazily so that
# `sam3d info` does not pay for FastAPI and `sam3d serve` does not pay for matplotlib.
COMMANDS: dict[str, str] = {
    "info": "sam3d.model.commands",
    "phantoms": "sam3d.data.commands",
    "train": "sam3d.train.commands",
    "evaluate": "sam3d.evaluate.commands",
    "serve": "sam3d.serve.commands",
    "segment": "sam3d.engine.commands",
    "batch": "sam3d.batch.commands",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam3d", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name in COMMANDS:
        if name == wanted:
            importlib.import_module(COMMANDS[name]).register(subparsers)
        else:  # listed in --help without importing its module
            subparsers.add_parser(name, help=f"see `sam3d {name} --help`")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as error:
        print(f"sam3d {args.command}: error: {error}", file=sys.stderr)
        return 2
