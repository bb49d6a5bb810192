"""`sam3d serve`: the HTTP API v1 on uvicorn, one warmed-up model shared by all sessions.

Every limit below is enforced before the request that would pass it is read; docs/SECURITY.md
says whom the server trusts and how to deploy it for a team.
"""

from __future__ import annotations

import argparse
import errno
import functools
import gc
import os
import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..client.wire import is_loopback
from ..engine.choices import CLICK_PATHWAYS, SLICE_PRECISION_HELP, SLICE_PRECISIONS
from ..errors import CLIError
from ..model.checkpoint import CheckpointError
from .guard import LOOPBACK_HOSTS
from .settings import ServerSettings

if TYPE_CHECKING:  # the engine (torch) is imported only once the arguments are known to be good
    from ..engine.predictor import Predictor

API_KEY_ENV = "SAM3D_API_KEY"
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
TUNNEL_HINT = "ssh -L 8000:127.0.0.1:8000 THIS_HOST, then http://127.0.0.1:8000 on the client"


def byte_size(text: str) -> int:
    """'1073741824' / '512M' / '4G' / '1.5GiB' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (bytes, or e.g. 512M, 4G)")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="run the HTTP server the Slicer module talks to",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ServerSettings()
    net = parser.add_argument_group("network and access")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1; anything else needs an API key)")
    net.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    net.add_argument("--api-key", default=None,
                     help=f"bearer token clients must send; visible in `ps`: prefer --api-key-file or ${API_KEY_ENV}")
    net.add_argument("--api-key-file", default=None, metavar="FILE",
                     help="read the API key from this file (first line)")
    net.add_argument("--ssl-certfile", default=None, metavar="PEM", help="serve https with this certificate (chain)")
    net.add_argument("--ssl-keyfile", default=None, metavar="PEM", help="the certificate's private key")
    net.add_argument("--allowed-hosts", default=None, metavar="NAME[,NAME]",
                     help="Host header names served (default: loopback names, plus --host; any name when "
                          "bound beyond loopback); blocks DNS rebinding")
    net.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                     help="a web origin (https://app.example) allowed to call the API; repeat for more "
                          "(default: none, cross-origin requests are refused)")
    net.add_argument("--auth-failures-per-minute", type=int, default=d.auth_failures_per_minute,
                     help=f"401s per client address and minute before 429 (default {d.auth_failures_per_minute})")
    lim = parser.add_argument_group("limits")
    lim.add_argument("--max-sessions", type=int, default=d.max_sessions,
                     help=f"sessions held at once (default {d.max_sessions})")
    lim.add_argument("--session-ttl", type=float, default=d.session_ttl_s, metavar="SECONDS",
                     help=f"a session expires after this long without requests (default {d.session_ttl_s:g})")
    lim.add_argument("--evict-idle-after", type=float, default=d.evict_idle_s, metavar="SECONDS",
                     help="when the sessions or the memory budget are full, a session idle this long is "
                          f"closed to make room (its owner gets 410) (default {d.evict_idle_s:g})")
    lim.add_argument("--max-memory", type=byte_size, default=None, metavar="BYTES",
                     help="memory budget of all sessions together: volumes, masks, undo history, encoder "
                          "caches (default: half the machine's available memory at start)")
    lim.add_argument("--max-session-memory", type=byte_size, default=d.max_session_memory_bytes, metavar="BYTES",
                     help=f"memory budget of one session (default {d.max_session_memory_bytes >> 20}M)")
    lim.add_argument("--max-upload-bytes", type=byte_size, default=d.max_upload_bytes, metavar="BYTES",
                     help=f"a volume upload as sent (default {d.max_upload_bytes >> 20}M)")
    lim.add_argument("--max-json-bytes", type=byte_size, default=d.max_json_bytes, metavar="BYTES",
                     help=f"any other request body (default {d.max_json_bytes >> 20}M)")
    lim.add_argument("--max-voxels", type=int, default=d.max_voxels,
                     help=f"voxels of an uploaded volume (default {d.max_voxels})")
    lim.add_argument("--max-undo-bytes", type=byte_size, default=d.max_undo_bytes, metavar="BYTES",
                     help=f"undo history per object, oldest dropped first (default {d.max_undo_bytes >> 20}M)")
    lim.add_argument("--max-points", type=int, default=d.max_points,
                     help=f"clicks per object (default {d.max_points})")
    lim.add_argument("--max-interactions", type=int, default=d.max_interactions,
                     help=f"interactions per object (default {d.max_interactions})")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="default", help="'default' (the bundled lite model), 'small-phantoms' (the fast phantom-trained one) or a checkpoint path")
    model.add_argument("--sam-checkpoint", default=None,
                       help="SAM's sam_vit_b_01ec64.pth, for a vit_b adapter checkpoint")
    model.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    model.add_argument("--click-pathway", default=d.click_pathway, choices=CLICK_PATHWAYS,
                       help="who answers an object's first click: 3d (default) = the 3D model, the fastest on a "
                            "CPU; search = LiteMedSAM's 2D pathway from the box that fits the click's slice best, "
                            "then corrections as after a box: the better masks on real images, but seconds of 2D "
                            "slices on a CPU (docs/BENCHMARKS.md); gated = the 3D model, replaced by the "
                            "search's mask where that holds the 3D mask whole or lies inside it. Models whose "
                            "boxes go to the 2D pathway; others answer with the 3D model")
    model.add_argument("--slice-precision", default="auto", choices=SLICE_PRECISIONS, help=SLICE_PRECISION_HELP)
    model.add_argument("--idle-prefetch", action=argparse.BooleanOptionalAction, default=d.idle_prefetch,
                       help="after a click, mask edit or undo on an object the 2D pathway corrects, embed the "
                            "slice windows its next correction decodes on while no request runs (from 0.25 s after "
                            "the last one): that correction then takes tens of "
                            "milliseconds instead of hundreds on a CPU, with the same mask (default: on; "
                            "--no-idle-prefetch leaves the CPU idle between requests)")
    model.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                       help="compile the lite model's frozen TinyViT for this CPU at start (torch.compile; needs a "
                            "C++ compiler): first clicks about 1.4x faster. The first start on a machine takes one to "
                            "two minutes, later ones seconds (torch caches what it built in $TORCHINDUCTOR_CACHE_DIR, by "
                            "default a folder in /tmp); if it fails the server says why and runs uncompiled. "
                            "No effect on other models or on a GPU (default: on; --no-compile skips it)")
    model.add_argument("--threads", type=int, default=None,
                       help="CPU threads for the model (default: PyTorch's choice)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(func=run)


def api_key_from(args: argparse.Namespace) -> str | None:
    """--api-key-file, --api-key or $SAM3D_API_KEY (in that order), None when none is given."""
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as error:
            raise CLIError(f"--api-key-file {args.api_key_file}: cannot read a key ({error or 'empty file'})") from None
        if not key:
            raise CLIError(f"--api-key-file {args.api_key_file}: the first line is empty")
        return key
    return args.api_key or os.environ.get(API_KEY_ENV) or None


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Checked settings; refuses to expose the server beyond loopback without a key."""
    from .memory import default_budget

    api_key = api_key_from(args)
    loopback = is_loopback(args.host)
    if not loopback and api_key is None:
        raise CLIError(f"refusing to listen on {args.host} without an API key: anyone on the network "
                       f"could use the server. Pass --api-key-file FILE (or set {API_KEY_ENV}), or bind 127.0.0.1")
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise CLIError("give both --ssl-certfile and --ssl-keyfile for https")
    for option in ("ssl_certfile", "ssl_keyfile"):
        path = getattr(args, option)
        if path and not Path(path).is_file():
            raise CLIError(f"--{option.replace('_', '-')} {path}: no such file")
    for name in ("max_sessions", "max_upload_bytes", "max_json_bytes", "max_voxels", "max_session_memory",
                 "max_undo_bytes", "max_points", "max_interactions", "auth_failures_per_minute"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_memory is not None and args.max_memory < 1:
        raise CLIError("--max-memory must be at least 1 byte")
    if args.session_ttl <= 0 or args.evict_idle_after < 0:
        raise CLIError("--session-ttl must be positive and --evict-idle-after not negative (seconds)")
    if args.threads is not None and args.threads < 1:
        raise CLIError("--threads must be at least 1")
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port {args.port} is not a TCP port (0-65535)")
    if args.allowed_hosts:
        hosts = tuple(h.strip().lower() for h in args.allowed_hosts.split(",") if h.strip())
    elif loopback:
        hosts = tuple(dict.fromkeys(LOOPBACK_HOSTS + (args.host.strip("[]").lower(),)))
    else:
        hosts = ("*",)
    return ServerSettings(
        api_key=api_key, max_sessions=args.max_sessions, session_ttl_s=args.session_ttl,
        evict_idle_s=args.evict_idle_after, max_upload_bytes=args.max_upload_bytes,
        max_json_bytes=args.max_json_bytes, max_voxels=args.max_voxels,
        max_memory_bytes=args.max_memory or default_budget(),
        max_session_memory_bytes=args.max_session_memory, max_undo_bytes=args.max_undo_bytes,
        max_points=args.max_points, max_interactions=args.max_interactions, allowed_hosts=hosts,
        cors_origins=tuple(args.cors_origin), auth_failures_per_minute=args.auth_failures_per_minute,
        click_pathway=args.click_pathway, idle_prefetch=args.idle_prefetch)


def warnings_for(args: argparse.Namespace) -> list[str]:
    """What the operator should know about this way of starting the server."""
    notes = []
    if not is_loopback(args.host) and not args.ssl_certfile:
        notes.append(f"serving on {args.host} without TLS: the API key and patients' volumes cross the network "
                     "in clear text. Give --ssl-certfile / --ssl-keyfile, or keep --host 127.0.0.1 and reach "
                     f"the server through an SSH tunnel ({TUNNEL_HINT})")
    if args.api_key:
        notes.append(f"--api-key is visible to every user of this machine (`ps`); prefer --api-key-file or {API_KEY_ENV}")
    return notes


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the model loads: a taken port is said at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise CLIError(f"port {port} on {host} is in use (another sam3d serve?); stop that server or "
                           "choose another port with --port") from None
        raise CLIError(f"cannot listen on {host}:{port}: {error.strerror or error}; check --host and --port") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted connections inherit it
    return sock


def compile_encoder(predictor: Predictor) -> str:
    """``Predictor.compile_encoder`` said in words for the start-up line: "yes (N s)", or "no"
    after a warning that names the failure (the server then runs the encoder as built:
    compiling is a speed-up, never a reason not to serve)."""
    print("sam3d serve: compiling the encoder for this CPU (one to two minutes on a machine's first start, "
          "seconds later; --no-compile skips it) ...", flush=True)
    seconds, failure = predictor.try_compile_encoder()
    if seconds is None:
        print(f"sam3d serve: warning: could not compile the encoder ({failure}); running it uncompiled. A C++ "
              "compiler (g++) must be installed; --no-compile skips trying", file=sys.stderr, flush=True)
        return "no"
    return f"yes ({seconds:.0f} s)"


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    with listening_socket(args.host, args.port) as sock:
        import uvicorn  # the server's heavy imports only once the arguments are known to be good

        import torch

        from ..engine.predictor import Predictor
        from .app import create_app
        from .lanes import EngineLanes

        lanes = EngineLanes(args.threads or torch.get_num_threads())
        for note in warnings_for(args):
            print(f"sam3d serve: warning: {note}", file=sys.stderr, flush=True)
        try:  # on the main lane: the only thread that runs parallel torch work (lanes.py)
            predictor = lanes.run_on_main(functools.partial(
                Predictor.load, args.model, device=args.device, sam_checkpoint=args.sam_checkpoint,
                slice_precision=args.slice_precision))
        except (CheckpointError, ValueError) as error:
            raise CLIError(str(error)) from error
        if not predictor.compilable:
            compiled = "not applicable"
        else:
            compiled = lanes.run_on_main(compile_encoder, predictor) if args.compile else "off (--no-compile)"
        seconds = lanes.run_on_main(predictor.warm_up)
        gc.freeze()  # what start-up built (model, compiled code: ~0.5 M objects) is never garbage-collected
        scheme = "https" if args.ssl_certfile else "http"
        print(f"sam3d serve: model {predictor.name} ({predictor.config.name}, weights {predictor.loaded.sha256[:8]}) "
              f"on {predictor.device}, encoder compiled: {compiled}, 2D pathway in {predictor.slice_precision}, "
              f"warm-up {seconds * 1000:.0f} ms; auth {'on' if settings.api_key else 'off'}; memory budget "
              f"{settings.max_memory_bytes / 2**30:.1f} GiB; {scheme}://{args.host}:{args.port}", flush=True)
        config = uvicorn.Config(create_app(predictor, settings, lanes), host=args.host, port=args.port,
                                log_level=args.log_level, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
        uvicorn.Server(config).run(sockets=[sock])
    return 0
