"""The routes of HTTP API v1 (docs/PROTOCOL.md): ``public`` (health) and ``router`` (everything
behind the API key), over the ``ServerState`` that ``create_app`` puts on ``app.state.server``.

No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime.
"""

import asyncio
import functools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.security import HTTPBearer

from .. import __version__
from ..client.wire import encode_mask_bits
from ..engine.predictor import IdleStep, Predictor
from ..engine.session import MaskChange, Session
from . import errors
from .errors import APIError, BadRequest, SessionExpired, SessionNotFound
from .memory import resident_bytes, session_ceiling
from .schemas import (ERROR_REPLIES, MAX_POINTS_PER_REQUEST, SESSION_ID, SHAPE_PATTERN, SPACING_PATTERN,
                      Capabilities, Health, InteractionRequest, Limits, MaskRequest, MaskUpdate, Memory,
                      Metrics, ModelInfo, ResetReply, SessionCreated, SessionInfo, Timing)
from .lanes import EngineLanes
from .sessions import SessionStore
from .settings import ServerSettings
from .wire import COMPRESSIONS, DTYPES, decode_mask_bits, decode_volume, parse_upload_shape

API_VERSION = "1"
SessionId = Annotated[str, Path(pattern=SESSION_ID, description="the id POST /v1/sessions returned")]


class Counters:
    """Request counters of /v1/metrics (thread-safe)."""

    def __init__(self) -> None:
        self.interactions = 0
        self.errors = 0
        self._lock = threading.Lock()

    def add(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)


@dataclass
class ServerState:
    """What the routes share: the model, the settings, the sessions, the upload worker and the
    engine lanes."""

    predictor: Predictor
    settings: ServerSettings
    store: SessionStore
    crop_bytes: int
    window_bytes: int  # a session's kept 2D pathway windows at most (memory.slice_window_bytes)
    upload_pool: ThreadPoolExecutor
    lanes: EngineLanes
    counters: Counters = field(default_factory=Counters)


def _server_state(request: Request) -> ServerState:
    return request.app.state.server


Server = Annotated[ServerState, Depends(_server_state)]
public = APIRouter()
# Host, origin, API key and body size are checked by the Guard middleware before any body is
# read; the bearer scheme here only documents the key in the OpenAPI schema.
router = APIRouter(dependencies=[Depends(HTTPBearer(auto_error=False,
                                                    description="the server's --api-key, when it has one"))])


def _mask_update(change: MaskChange) -> MaskUpdate:
    return MaskUpdate(bbox=[list(change.lo), list(change.hi)], mask=encode_mask_bits(change.mask),
                      voxels=change.voxels, interaction=change.interaction,
                      encoder_ran=change.encoder_ran, crops=change.crops,
                      timing_ms=Timing(**change.timing_ms))


def _run_engine(server: ServerState, call, *args):
    """Run an engine call on the engine lanes, turning its failures into API errors (the session
    stays unchanged)."""
    try:
        return server.lanes.run(call, *args)
    except (*errors.ENGINE_ERRORS, ValueError) as error:
        raise (errors.engine_error(error) or BadRequest(str(error))) from None
    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
        raise errors.OutOfMemory(f"out of memory while predicting: {type(error).__name__}") from None
    except Exception as error:
        # Answered here rather than by the app's last-resort handler, which re-raises to uvicorn
        # and so closes the client's keep-alive connection.
        errors.log.exception("prediction failed")
        raise APIError(f"the prediction failed: {type(error).__name__}: {error}") from None



@public.get("/v1/health", response_model=Health, tags=["server"])
def health() -> Health:
    """Liveness; needs no API key."""
    return Health(status="ok", api_version=API_VERSION)


@router.get("/v1/capabilities", response_model=Capabilities,
            responses=ERROR_REPLIES, tags=["server"])
def capabilities(server: Server) -> Capabilities:
    config, settings = server.predictor.config, server.settings
    return Capabilities(
        api_version=API_VERSION, server_version=__version__,
        model=ModelInfo(name=server.predictor.name, variant=config.name, crop_size=config.crop_size,
                        crop_spacing_mm=config.crop_spacing_mm, sha256=server.predictor.loaded.sha256,
                        slice_precision=server.predictor.slice_precision, click_pathway=settings.click_pathway),
        device=str(server.predictor.device),
        limits=Limits(max_upload_bytes=settings.max_upload_bytes, max_json_bytes=settings.max_json_bytes,
                      max_voxels=settings.max_voxels, max_sessions=settings.max_sessions,
                      session_ttl_s=settings.session_ttl_s, evict_idle_s=settings.evict_idle_s,
                      max_memory_bytes=settings.max_memory_bytes,
                      max_session_memory_bytes=settings.max_session_memory_bytes,
                      max_undo_bytes=settings.max_undo_bytes, max_points=settings.max_points,
                      max_interactions=settings.max_interactions,
                      max_points_per_request=MAX_POINTS_PER_REQUEST),
        prompts=["point", "box", "mask"] if server.predictor.answers_boxes else ["point", "mask"],
        axis_order="kji", compression=list(COMPRESSIONS),
        dtypes=list(DTYPES), auth_required=settings.api_key is not None)


@router.get("/v1/metrics", response_model=Metrics, responses=ERROR_REPLIES,
            tags=["server"])
def metrics(server: Server) -> Metrics:
    server.store.purge()
    return Metrics(sessions=len(server.store), encoder_runs=server.predictor.encoder_runs,
                   decoder_runs=server.predictor.decoder_runs, interactions=server.counters.interactions,
                   errors=server.counters.errors,
                   memory=Memory(**server.store.memory(), resident_bytes=resident_bytes()))


@router.post("/v1/sessions", status_code=201, response_model=SessionCreated,
             responses=ERROR_REPLIES, tags=["sessions"],
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def create_session(
    request: Request,
    server: Server,
    shape: Annotated[str, Query(description="K,J,I", pattern=SHAPE_PATTERN)],
    spacing: Annotated[str, Query(description="SK,SJ,SI in mm", pattern=SPACING_PATTERN)],
    dtype: Annotated[Literal[DTYPES], Query()] = "int16",
    compression: Annotated[Literal[COMPRESSIONS], Query()] = "zlib",
) -> SessionCreated:
    """Upload a volume (C-order kji array bytes, zlib-compressed unless compression=none)."""
    settings = server.settings
    dims, sizes = parse_upload_shape(shape, spacing, settings.max_voxels)
    keep = session_ceiling(dims, dtype, settings.max_undo_bytes, settings.cache_crops, server.crop_bytes,
                           server.window_bytes)
    if keep > settings.max_session_memory_bytes:
        raise errors.MemoryBudgetExceeded(
            f"a session of this volume needs up to {keep / 2**20:.1f} MiB (volume, mask, undo history, "
            f"encoder cache, 2D pathway windows); this server allows {settings.max_session_memory_bytes / 2**20:.1f} MiB per session")
    declared = request.headers.get("content-length", "")
    reserved = keep + (int(declared) if declared.isdigit() else settings.max_upload_bytes)
    server.store.reserve(reserved)  # the body is read only once the budget holds it
    try:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
        array = await asyncio.get_running_loop().run_in_executor(
            server.upload_pool, decode_volume, body, dims, dtype, compression)
        del body
        session = Session(server.predictor, array, sizes, cache_size=settings.cache_crops,
                          max_crops=settings.max_crops, max_undo_bytes=settings.max_undo_bytes,
                          max_points=settings.max_points, max_interactions=settings.max_interactions,
                          click_pathway=settings.click_pathway)
    except BaseException:
        server.store.release(reserved)
        raise
    session_id = server.store.add(session, reserved, keep)
    return SessionCreated(session_id=session_id, shape=list(dims), spacing=list(sizes),
                          expires_in_s=server.store.expires_in(session_id), memory_bytes=keep)


@router.get("/v1/sessions/{session_id}", response_model=SessionInfo,
            responses=ERROR_REPLIES, tags=["sessions"])
def session_info(session_id: SessionId, server: Server) -> SessionInfo:
    with server.store.use(session_id) as session:
        return SessionInfo(session_id=session_id, shape=list(session.shape), spacing=list(session.spacing),
                           interactions=session.interactions, points=session.points.tolist(),
                           labels=session.labels.tolist(),
                           box=None if session.box is None else session.box.tolist(), voxels=session.voxels,
                           encoder_runs=session.encoder_runs, decoder_runs=session.decoder_runs,
                           cached_crops=len(session.cache), slice_windows=session.slice_windows,
                           slice_windows_ahead=session.slice_windows_ahead, memory_bytes=session.memory_bytes(),
                           expires_in_s=server.store.ttl_s)


@router.delete("/v1/sessions/{session_id}", status_code=204,
               responses=ERROR_REPLIES, tags=["sessions"])
def delete_session(session_id: SessionId, server: Server) -> Response:
    server.store.delete(session_id)
    return Response(status_code=204)


@router.post("/v1/sessions/{session_id}/interactions", response_model=MaskUpdate,
             responses=ERROR_REPLIES, tags=["segmentation"])
def interact(session_id: SessionId, body: InteractionRequest, server: Server) -> MaskUpdate:
    """Add labelled points (and a box) to the current object; the reply holds the box that changed."""
    if len(body.labels) != len(body.points):
        raise BadRequest(f"{len(body.points)} points but {len(body.labels)} labels; give one label per point")
    with server.store.use(session_id) as session:
        change = _run_engine(server, session.interact, body.points, body.labels, body.box)
    server.counters.add("interactions")
    _prefetch_in_idle_time(server, session_id, change)
    return _mask_update(change)


def _prefetch_in_idle_time(server: ServerState, session_id: str, change: MaskChange) -> None:
    """After a change of a session's mask (a click, a mask edit, an undo): from now on, in idle
    time, the rest of a finer crop its first click encoded in part, then the 2D windows its next
    correction will decode on."""
    if server.settings.idle_prefetch:
        server.lanes.run_in_idle_time(session_id, functools.partial(_prefetch_step, server, session_id,
                                                                    change.interaction))


def _prefetch_step(server: ServerState, session_id: str, interaction: int) -> IdleStep:
    """Idle work after the change that left a session at interaction ``interaction``: one more
    run of the slices of a crop encoded in part (``Session.complete_partial_crop``), else one
    more 2D window its next correction will decode on (``Session.prefetch_corrections``). DONE
    once there is nothing more to do, or the session has moved on (a later change starts its
    own) or is gone; BUSY while the session or the encoder is in use."""
    try:
        with server.store.use(session_id, touch=False) as session:  # idle work keeps no session alive
            if session.interactions != interaction:
                return IdleStep.DONE
            outcome = session.complete_partial_crop()
            return outcome if outcome is not IdleStep.DONE else session.prefetch_corrections()
    except (SessionNotFound, SessionExpired):
        return IdleStep.DONE


@router.put("/v1/sessions/{session_id}/mask", response_model=MaskUpdate,
            responses=ERROR_REPLIES, tags=["segmentation"])
def set_mask(session_id: SessionId, body: MaskRequest, server: Server) -> MaskUpdate:
    """Replace the current object by the user's own mask (zero outside bbox)."""
    with server.store.use(session_id) as session:
        lo, hi = tuple(body.bbox[0]), tuple(body.bbox[1])
        if any(h < l for l, h in zip(lo, hi)) or any(h > n for h, n in zip(hi, session.shape)):
            raise BadRequest(f"bbox {list(lo)}..{list(hi)} is not a box inside the volume {list(session.shape)}")
        shape = tuple(h - l for l, h in zip(lo, hi))
        if math.prod(shape) > session.mask.size:
            raise BadRequest("bbox is larger than the volume")
        mask = decode_mask_bits(body.mask, shape)
        change = _run_engine(server, session.set_mask, lo, hi, mask)
    _prefetch_in_idle_time(server, session_id, change)
    return _mask_update(change)


@router.post("/v1/sessions/{session_id}/undo", response_model=MaskUpdate,
             responses=ERROR_REPLIES, tags=["segmentation"])
def undo(session_id: SessionId, server: Server) -> MaskUpdate:
    """Return to the state before the last interaction or mask edit."""
    with server.store.use(session_id) as session:
        change = _run_engine(server, session.undo)
    _prefetch_in_idle_time(server, session_id, change)
    return _mask_update(change)


@router.post("/v1/sessions/{session_id}/reset", response_model=ResetReply,
             responses=ERROR_REPLIES, tags=["segmentation"])
def reset(session_id: SessionId, server: Server) -> ResetReply:
    """Clear the current object (next lesion); the volume and encoder cache stay."""
    with server.store.use(session_id) as session:
        session.reset()
    return ResetReply(session_id=session_id, reset=True)
