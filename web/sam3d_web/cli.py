"""Command line of the web app (``sam3d web`` / ``sam3d-web`` / ``python -m sam3d_web``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, NoReturn, Optional

from . import MODULE_DIR  # noqa: F401  (puts SAM3DPromptLib on sys.path)
from SAM3DPromptLib.wire import is_loopback

DEFAULT_SERVER = "http://127.0.0.1:8000"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam3d web",
        description="Click-to-segment in a web browser: Slicer's slice views and segmentation display "
                    "(trame-slicer) driving the SAM3DPrompt module's logic against a `sam3d serve` server.")
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="volumes to open (NRRD, NIfTI, ... anything Slicer reads)")
    parser.add_argument("--server", default=DEFAULT_SERVER, metavar="URL",
                        help=f"the `sam3d serve` server (default {DEFAULT_SERVER})")
    parser.add_argument("--api-key-file", type=Path, metavar="FILE",
                        help="file holding the server's API key (when the server requires one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the web app listens on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port of the web app (default 8080)")
    parser.add_argument("--access-key-file", type=Path, metavar="FILE",
                        help="file holding the key a browser must give (open http://HOST:PORT/?secret=KEY); "
                             "required when --host is not a loopback address")
    parser.add_argument("--output-dir", type=Path, default=Path.cwd(), metavar="DIR",
                        help="where saved segmentations (.seg.nrrd) and point lists (.mrk.json) go "
                             "(default: the current folder); each is also downloaded by the browser")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="how long one server request may take (default 60)")
    return parser


def fail(message: str) -> NoReturn:
    """A user error: one clear line, exit status 2 (as every `sam3d` command)."""
    print(f"sam3d web: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _read_key(path: Optional[Path], option: str) -> Optional[str]:
    if path is None:
        return None
    try:
        key = path.read_text().strip()
    except OSError as error:
        fail(f"{option} {path}: {error.strerror}")
    if not key:
        fail(f"{option} {path} is empty; write the key into it")
    return key


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    api_key = _read_key(args.api_key_file, "--api-key-file")
    access_key = _read_key(args.access_key_file, "--access-key-file")
    if not is_loopback(args.host) and access_key is None:
        fail(f"refusing to listen on {args.host} without an access key: "
                         "anyone on the network could read and segment your images. Pass "
                         "--access-key-file FILE, or bind 127.0.0.1")
    if not 0 <= args.port <= 65535:
        fail(f"--port {args.port} is not a TCP port (0-65535)")
    missing = [image for image in args.images if not os.path.isfile(image)]
    if missing:
        fail(f"no such image file: {', '.join(missing)}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    # Headless machines have no X display: render with EGL (Mesa's software renderer will do).
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

    from .app import PromptWebApp  # trame / slicer imports only once the arguments are good

    app = PromptWebApp(server_url=args.server, api_key=api_key, output_dir=args.output_dir,
                       timeout=args.timeout)
    for image in args.images:
        app.load_volume(image)
    # trame reads its own options from sys.argv: give it exactly these (no browser of its own,
    # no shutdown while no browser is connected, the access key when there is one).
    sys.argv = [sys.argv[0], "--server", "--timeout", "0", "--host", args.host, "--port", str(args.port)]
    if args.access_key_file is not None:
        sys.argv += ["--authKeyFile", str(args.access_key_file)]
    print(f"sam3d web: open http://{args.host}:{args.port}/"
          + ("?secret=<access key>" if access_key else ""), file=sys.stderr, flush=True)
    app.server.start(open_browser=False, host=args.host, port=args.port, show_connection_info=False)
    return 0
