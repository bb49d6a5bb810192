"""The HTTP API v1 (docs/PROTOCOL.md) as a FastAPI application over the engine.

No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime.
"""

import asyncio
import contextlib
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Literal

import torch
from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPBearer

from .. import __version__
from ..client.wire import encode_mask_bits
from ..engine.predictor import Predictor
from ..engine.session import MaskChange, Session
from . import errors
from .errors import APIError, BadRequest, install_handlers
from .guard import Guard, GuardSettings
from .memory import feature_bytes, resident_bytes, session_ceiling
from .schemas import (ERROR_REPLIES, MAX_POINTS_PER_REQUEST, SESSION_ID, SHAPE_PATTERN, SPACING_PATTERN,
                      Capabilities, Health, InteractionRequest, Limits, MaskRequest, MaskUpdate, Memory,
                      Metrics, ModelInfo, ResetReply, SessionCreated, SessionInfo, Timing)
from .sessions import SessionStore
from .settings import ServerSettings
from .wire import COMPRESSIONS, DTYPES, decode_mask_bits, decode_volume, parse_upload_shape

API_VERSION = "1"
SessionId = Annotated[str, Path(pattern=SESSION_ID, description="the id POST /v1/sessions returned")]


def _mask_update(change: MaskChange) -> MaskUpdate:
    return MaskUpdate(bbox=[list(change.lo), list(change.hi)], mask=encode_mask_bits(change.mask),
                      voxels=change.voxels, interaction=change.interaction,
                      encoder_ran=change.encoder_ran, crops=change.crops,
                      timing_ms=Timing(**change.timing_ms))


class _Counters:
    def __init__(self) -> None:
        self.interactions = 0
        self.errors = 0
        self._lock = threading.Lock()

    def add(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)


def _run_engine(call, *args):
    """Run an engine call, turning its failures into API errors (the session stays unchanged)."""
    try:
        return call(*args)
    except (*errors.ENGINE_ERRORS, ValueError) as error:
        raise (errors.engine_error(error) or BadRequest(str(error))) from None
    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
        raise errors.OutOfMemory(f"out of memory while predicting: {type(error).__name__}") from None
    except Exception as error:
        # Answered here rather than by the app's last-resort handler, which re-raises to uvicorn
        # and so closes the client's keep-alive connection.
        errors.log.exception("prediction failed")
        raise APIError(f"the prediction failed: {type(error).__name__}: {error}") from None


def _low_priority_thread() -> None:
    """Lower the calling thread's CPU priority (Linux: per thread) so that inflating uploads
    yields the cores to other users' clicks."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def create_app(predictor: Predictor | None, settings: ServerSettings = ServerSettings()) -> FastAPI:
    """The API over ``predictor`` (None only to export the OpenAPI schema)."""
    store = SessionStore(settings.max_sessions, settings.session_ttl_s, settings.max_memory_bytes,
                         settings.evict_idle_s)
    counters = _Counters()
    crop_bytes = feature_bytes(predictor) if predictor is not None else 0
    # Uploads are inflated one at a time, off the event loop, at low priority.
    upload_pool = ThreadPoolExecutor(1, thread_name_prefix="sam3d-upload", initializer=_low_priority_thread)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def purge_expired() -> None:  # frees expired sessions' memory without waiting for a request
            while True:
                await asyncio.sleep(min(30.0, max(settings.session_ttl_s / 2, 0.5)))
                store.purge()

        task = asyncio.create_task(purge_expired())
        yield
        task.cancel()
        upload_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="SAM3DPrompt server", version=__version__, lifespan=lifespan,
                  description="Click-prompted 3D segmentation, API v1. See docs/PROTOCOL.md and docs/SECURITY.md.")
    install_handlers(app, lambda: counters.add("errors"))
    # Host, origin, API key and body size are checked by the Guard before any body is read;
    # the bearer scheme here only documents the key in the OpenAPI schema.
    app.add_middleware(Guard, settings=GuardSettings(
        api_key=settings.api_key, allowed_hosts=settings.allowed_hosts, cors_origins=settings.cors_origins,
        max_upload_bytes=settings.max_upload_bytes, max_json_bytes=settings.max_json_bytes,
        auth_failures_per_minute=settings.auth_failures_per_minute))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])
    secured = [Depends(HTTPBearer(auto_error=False, description="the server's --api-key, when it has one"))]

    @app.get("/v1/health", response_model=Health, tags=["server"])
    def health() -> Health:
        """Liveness; needs no API key."""
        return Health(status="ok", api_version=API_VERSION)

    @app.get("/v1/capabilities", response_model=Capabilities, dependencies=secured,
             responses=ERROR_REPLIES, tags=["server"])
    def capabilities() -> Capabilities:
        config = predictor.config
        return Capabilities(
            api_version=API_VERSION, server_version=__version__,
            model=ModelInfo(name=predictor.name, variant=config.name, crop_size=config.crop_size,
                            crop_spacing_mm=config.crop_spacing_mm),
            device=str(predictor.device),
            limits=Limits(max_upload_bytes=settings.max_upload_bytes, max_json_bytes=settings.max_json_bytes,
                          max_voxels=settings.max_voxels, max_sessions=settings.max_sessions,
                          session_ttl_s=settings.session_ttl_s, evict_idle_s=settings.evict_idle_s,
                          max_memory_bytes=settings.max_memory_bytes,
                          max_session_memory_bytes=settings.max_session_memory_bytes,
                          max_undo_bytes=settings.max_undo_bytes, max_points=settings.max_points,
                          max_interactions=settings.max_interactions,
                          max_points_per_request=MAX_POINTS_PER_REQUEST),
            prompts=["point", "box", "mask"] if config.box_prompt else ["point", "mask"],
            axis_order="kji", compression=list(COMPRESSIONS),
            dtypes=list(DTYPES), auth_required=settings.api_key is not None)

    @app.get("/v1/metrics", response_model=Metrics, dependencies=secured, responses=ERROR_REPLIES,
             tags=["server"])
    def metrics() -> Metrics:
        return Metrics(sessions=len(store), encoder_runs=predictor.encoder_runs,
                       decoder_runs=predictor.decoder_runs, interactions=counters.interactions,
                       errors=counters.errors, memory=Memory(**store.memory(), resident_bytes=resident_bytes()))

    @app.post("/v1/sessions", status_code=201, response_model=SessionCreated, dependencies=secured,
              responses=ERROR_REPLIES, tags=["sessions"],
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def create_session(
        request: Request,
        shape: Annotated[str, Query(description="K,J,I", pattern=SHAPE_PATTERN)],
        spacing: Annotated[str, Query(description="SK,SJ,SI in mm", pattern=SPACING_PATTERN)],
        dtype: Annotated[Literal[DTYPES], Query()] = "int16",
        compression: Annotated[Literal[COMPRESSIONS], Query()] = "zlib",
    ) -> SessionCreated:
        """Upload a volume (C-order kji array bytes, zlib-compressed unless compression=none)."""
        dims, sizes = parse_upload_shape(shape, spacing, settings.max_voxels)
        keep = session_ceiling(dims, dtype, settings.max_undo_bytes, settings.cache_crops, crop_bytes)
        if keep > settings.max_session_memory_bytes:
            raise errors.MemoryBudgetExceeded(
                f"a session of this volume needs up to {keep / 2**20:.1f} MiB (volume, mask, undo history, "
                f"encoder cache); this server allows {settings.max_session_memory_bytes / 2**20:.1f} MiB per session")
        declared = request.headers.get("content-length", "")
        reserved = keep + (int(declared) if declared.isdigit() else settings.max_upload_bytes)
        store.reserve(reserved)  # the body is read only once the budget holds it
        try:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
            array = await asyncio.get_running_loop().run_in_executor(
                upload_pool, decode_volume, body, dims, dtype, compression)
            del body
            session = Session(predictor, array, sizes, cache_size=settings.cache_crops,
                              max_crops=settings.max_crops, max_undo_bytes=settings.max_undo_bytes,
                              max_points=settings.max_points, max_interactions=settings.max_interactions)
        except BaseException:
            store.release(reserved)
            raise
        session_id = store.add(session, reserved, keep)
        return SessionCreated(session_id=session_id, shape=list(dims), spacing=list(sizes),
                              expires_in_s=store.expires_in(session_id), memory_bytes=keep)

    @app.get("/v1/sessions/{session_id}", response_model=SessionInfo, dependencies=secured,
             responses=ERROR_REPLIES, tags=["sessions"])
    def session_info(session_id: SessionId) -> SessionInfo:
        with store.use(session_id) as session:
            return SessionInfo(session_id=session_id, shape=list(session.shape), spacing=list(session.spacing),
                               interactions=session.interactions, points=session.points.tolist(),
                               labels=session.labels.tolist(),
                               box=None if session.box is None else session.box.tolist(), voxels=session.voxels,
                               encoder_runs=session.encoder_runs, decoder_runs=session.decoder_runs,
                               cached_crops=len(session.cache), memory_bytes=session.memory_bytes(),
                               expires_in_s=store.ttl_s)

    @app.delete("/v1/sessions/{session_id}", status_code=204, dependencies=secured,
                responses=ERROR_REPLIES, tags=["sessions"])
    def delete_session(session_id: SessionId) -> Response:
        store.delete(session_id)
        return Response(status_code=204)

    @app.post("/v1/sessions/{session_id}/interactions", response_model=MaskUpdate, dependencies=secured,
              responses=ERROR_REPLIES, tags=["segmentation"])
    def interact(session_id: SessionId, body: InteractionRequest) -> MaskUpdate:
        """Add labelled points (and a box) to the current object; the reply holds the box that changed."""
        if len(body.labels) != len(body.points):
            raise BadRequest(f"{len(body.points)} points but {len(body.labels)} labels; give one label per point")
        with store.use(session_id) as session:
            change = _run_engine(session.interact, body.points, body.labels, body.box)
        counters.add("interactions")
        return _mask_update(change)

    @app.put("/v1/sessions/{session_id}/mask", response_model=MaskUpdate, dependencies=secured,
             responses=ERROR_REPLIES, tags=["segmentation"])
    def set_mask(session_id: SessionId, body: MaskRequest) -> MaskUpdate:
        """Replace the current object by the user's own mask (zero outside bbox)."""
        with store.use(session_id) as session:
            lo, hi = tuple(body.bbox[0]), tuple(body.bbox[1])
            if any(h < l for l, h in zip(lo, hi)) or any(h > n for h, n in zip(hi, session.shape)):
                raise BadRequest(f"bbox {list(lo)}..{list(hi)} is not a box inside the volume {list(session.shape)}")
            shape = tuple(h - l for l, h in zip(lo, hi))
            if math.prod(shape) > session.mask.size:
                raise BadRequest("bbox is larger than the volume")
            mask = decode_mask_bits(body.mask, shape)
            return _mask_update(_run_engine(session.set_mask, lo, hi, mask))

    @app.post("/v1/sessions/{session_id}/undo", response_model=MaskUpdate, dependencies=secured,
              responses=ERROR_REPLIES, tags=["segmentation"])
    def undo(session_id: SessionId) -> MaskUpdate:
        """Return to the state before the last interaction or mask edit."""
        with store.use(session_id) as session:
            return _mask_update(_run_engine(session.undo))

    @app.post("/v1/sessions/{session_id}/reset", response_model=ResetReply, dependencies=secured,
              responses=ERROR_REPLIES, tags=["segmentation"])
    def reset(session_id: SessionId) -> ResetReply:
        """Clear the current object (next lesion); the volume and encoder cache stay."""
        with store.use(session_id) as session:
            session.reset()
        return ResetReply(session_id=session_id, reset=True)

    return app
