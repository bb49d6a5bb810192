"""The `sam3d` console script: one sub-command per job, each registered by its own package."""
# (The help texts come from the command modules' docstrings; backticks, their code markup, are
# dropped for the terminal.)

from __future__ import annotations

import argparse
import importlib
import re
import sys

from . import __version__
from .errors import CLIError

# sub-command name -> (module that provides `register(subparsers)`, one-line summary); the
# module's parser sets `func` (called with the parsed args, returns an exit status). Imported
# lazily so that `sam3d info` does not pay for FastAPI and `sam3d serve` not for matplotlib.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("sam3d.model.commands", "describe a model configuration or checkpoint"),
    "phantoms": ("sam3d.data.commands", "write synthetic CT phantoms with labels and clicks (MSD layout)"),
    "average": ("sam3d.model.averaging", "average trained checkpoints of one configuration (a model soup)"),
    "train": ("sam3d.train.commands", "train a model from a YAML config"),
    "evaluate": ("sam3d.evaluate.commands", "score a model with simulated clicks (Dice / NSD per click)"),
    "compare": ("sam3d.evaluate.compare", "compare two evaluation reports case by case, with 95 %% intervals"),
    "serve": ("sam3d.serve.commands", "run the HTTP inference server (API v1) for the Slicer module"),
    "segment": ("sam3d.engine.commands", "segment one image from clicks (or a box) in RAS mm"),
    "batch": ("sam3d.batch.commands", "segment many cases from saved clicks (a manifest)"),
    "web": ("sam3d.web.commands", "click-to-segment in a web browser (trame-slicer app, its own venv)"),
}
DESCRIPTION = ("SAM3DPrompt: click-prompted 3D segmentation with SAM adapted to volumes - the inference "
               "server of the 3D Slicer module, one image or many cases from saved clicks, training and "
               "evaluation.")
EPILOG = "Run 'sam3d COMMAND --help' for a command's options."
# Options whose value is a list of RAS coordinates. argparse reads a token that starts with a minus
# sign as an option unless it is a plain negative number ("-3", "-.5"), so "--box -26.9,-34,0:..."
# failed with "expected one argument"; such a value is attached to its option before parsing.
COORDINATE_OPTIONS = ("--box", "--point")
NEGATIVE_COORDINATES = re.compile(r"-\.?\d\S*,\S*")  # "-26.9,-34,0:-62.9,-8.2,32.5", "-12.5,30,4:+"


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam3d", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"sam3d {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (module, summary) in COMMANDS.items():
        if name == wanted:
            importlib.import_module(module).register(subparsers)
            _plain_help(subparsers.choices[name])
        else:  # listed in --help without importing its module
            subparsers.add_parser(name, help=summary)
    return parser


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """Drop the code markup (backticks) of docstrings and help strings from a command's help."""
    parser.description = (parser.description or "").replace("`", "")
    for action in parser._actions:
        if action.help:
            action.help = action.help.replace("`", "")


def attach_negative_coordinates(argv: list[str]) -> list[str]:
    """``argv`` with each coordinate option followed by a value that starts with a minus sign
    written as one token, ``--box=VALUE``; tokens after ``--`` are left as they are."""
    attached: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            return attached + argv[index:]
        if token in COORDINATE_OPTIONS and index + 1 < len(argv) and NEGATIVE_COORDINATES.fullmatch(argv[index + 1]):
            attached.append(f"{token}={argv[index + 1]}")
            index += 2
        else:
            attached.append(token)
            index += 1
    return attached


def main(argv: list[str] | None = None) -> int:
    argv = attach_negative_coordinates(list(sys.argv[1:] if argv is None else argv))
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as error:
        print(f"sam3d {args.command}: error: {error}", file=sys.stderr)
        return 2
