"""`sam3d web ...` runs ``python -m sam3d_web ...`` in the web environment.

The web app needs trame-slicer, whose pinned slicer-core / vtk differ from this environment's,
so it has a virtual environment of its own (``.venv-web``, built by scripts/setup.sh); this
command only finds that interpreter and hands it every argument (``sam3d web --help`` shows the
app's own options).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import CLIError

WEB_PYTHON_ENV = "SAM3D_WEB_PYTHON"
REPO = Path(__file__).resolve().parents[3]


def web_python() -> Path:
    """The web environment's interpreter: $SAM3D_WEB_PYTHON, else the checkout's .venv-web."""
    return Path(os.environ.get(WEB_PYTHON_ENV) or REPO / ".venv-web" / "bin" / "python")


def register(subparsers) -> None:
    # Every argument, options included, goes to the app: no option prefix of its own here.
    parser = subparsers.add_parser("web", add_help=False, prefix_chars="\0",
                                   help="click-to-segment in a web browser (trame-slicer)")
    parser.add_argument("arguments", nargs="*")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    python = web_python()
    if not python.is_file():
        raise CLIError(f"the web environment is missing ({python}). Build it with `bash scripts/setup.sh` "
                       f"(or python3 -m venv .venv-web && .venv-web/bin/pip install -e web), or point "
                       f"{WEB_PYTHON_ENV} at its python")
    env = {**os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "web"), env.get("PYTHONPATH", "")) if p)
    os.execve(str(python), [str(python), "-m", "sam3d_web", *args.arguments], env)
    return 0  # not reached: the app replaces this process
