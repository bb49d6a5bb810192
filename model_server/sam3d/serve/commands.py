"""`sam3d serve`: the HTTP API v1 on uvicorn, one warmed-up model shared by all sessions."""

from __future__ import annotations

import argparse
import ipaddress
import os

from ..cli import CLIError
from ..model.checkpoint import CheckpointError
from .app import ServerSettings

API_KEY_ENV = "SAM3D_API_KEY"


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="run the HTTP server the Slicer module talks to",
                                   description=__doc__)
    defaults = ServerSettings()
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; anything else needs --api-key)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--model", default="default", help="'default' (the bundled model) or a checkpoint path")
    parser.add_argument("--sam-checkpoint", default=None,
                        help="SAM's sam_vit_b_01ec64.pth, for a vit_b adapter checkpoint")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--api-key", default=None,
                        help=f"bearer token clients must send (default: ${API_KEY_ENV})")
    parser.add_argument("--max-sessions", type=int, default=defaults.max_sessions)
    parser.add_argument("--session-ttl", type=float, default=defaults.session_ttl_s, metavar="SECONDS",
                        help="a session expires after this long without requests")
    parser.add_argument("--max-upload-bytes", type=int, default=defaults.max_upload_bytes)
    parser.add_argument("--max-voxels", type=int, default=defaults.max_voxels)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the model (default: PyTorch's choice)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Checked settings; refuses to expose the server beyond loopback without a key."""
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and api_key is None:
        raise CLIError(f"refusing to listen on {args.host} without an API key: anyone on the network "
                       f"could use the server. Pass --api-key KEY (or set {API_KEY_ENV}), or bind 127.0.0.1")
    for name in ("max_sessions", "max_upload_bytes", "max_voxels"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1")
    if args.session_ttl <= 0:
        raise CLIError("--session-ttl must be positive seconds")
    if args.threads is not None and args.threads < 1:
        raise CLIError("--threads must be at least 1")
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port {args.port} is not a TCP port (0-65535)")
    return ServerSettings(api_key=api_key, max_sessions=args.max_sessions, session_ttl_s=args.session_ttl,
                          max_upload_bytes=args.max_upload_bytes, max_voxels=args.max_voxels)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    import uvicorn  # the server's heavy imports only once the arguments are known to be good

    import torch

    from ..engine.predictor import Predictor
    from .app import create_app

    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        predictor = Predictor.load(args.model, device=args.device, sam_checkpoint=args.sam_checkpoint)
    except (CheckpointError, ValueError) as error:
        raise CLIError(str(error)) from error
    seconds = predictor.warm_up()
    print(f"sam3d serve: model {predictor.name} ({predictor.config.name}) on {predictor.device}, "
          f"warm-up {seconds * 1000:.0f} ms; auth {'on' if settings.api_key else 'off'}; "
          f"http://{args.host}:{args.port}", flush=True)
    uvicorn.run(create_app(predictor, settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0
