"""The HTTP API v1 (docs/PROTOCOL.md) as a FastAPI application over the engine.

No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime.
"""

import asyncio
import contextlib
import hmac
import math
import threading
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import torch
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .. import __version__
from ..engine.predictor import Predictor
from ..engine.session import MaskChange
from ..engine.session import InvalidBox as EngineInvalidBox
from ..engine.session import NothingToUndo as EngineNothingToUndo
from ..engine.session import Session
from . import errors
from .errors import APIError, BadRequest, PayloadTooLarge, Unauthorized, install_handlers
from .sessions import SessionStore
from .wire import COMPRESSIONS, DTYPES, decode_mask_bits, decode_volume, encode_mask_bits, parse_upload_shape

API_VERSION = "1"
MAX_POINTS_PER_REQUEST = 1000
SHAPE_PATTERN = r"^\d+,\d+,\d+$"
SPACING_PATTERN = r"^[0-9.eE+-]+,[0-9.eE+-]+,[0-9.eE+-]+$"


@dataclass(frozen=True)
class ServerSettings:
    """Limits and access control of one server."""

    api_key: str | None = None
    max_sessions: int = 8
    session_ttl_s: float = 1800.0
    max_upload_bytes: int = 1 << 30
    max_voxels: int = 1 << 28
    cache_crops: int = 8  # encoded crops kept per session (at least max_crops)
    max_crops: int = 6  # crops predicted per interaction


# -- request and reply bodies -----------------------------------------------------------------
# Strict: JSON true / false are not numbers here.
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Point = Annotated[list[Finite], Field(min_length=3, max_length=3)]
BoxCorners = Annotated[list[Point], Field(min_length=2, max_length=2,
                                          description="two opposite corners [[k, j, i], [k, j, i]], "
                                                      "continuous voxel indices, any order")]
Index = Annotated[list[Annotated[int, Field(strict=True, ge=0)]], Field(min_length=3, max_length=3)]
Label = Annotated[int, Field(strict=True, ge=0, le=1)]


class ErrorBody(BaseModel):
    error: str
    message: str
    hint: str


class Health(BaseModel):
    status: Literal["ok"]
    api_version: str


class ModelInfo(BaseModel):
    name: str
    variant: str
    crop_size: int
    crop_spacing_mm: float


class Limits(BaseModel):
    max_upload_bytes: int
    max_voxels: int
    max_sessions: int
    session_ttl_s: float


class Capabilities(BaseModel):
    api_version: str
    server_version: str
    model: ModelInfo
    device: str
    limits: Limits
    prompts: list[str]
    axis_order: Literal["kji"]
    compression: list[str]
    dtypes: list[str]
    auth_required: bool


class SessionCreated(BaseModel):
    session_id: str
    shape: list[int]
    spacing: list[float]
    expires_in_s: float


class SessionInfo(BaseModel):
    session_id: str
    shape: list[int]
    spacing: list[float]
    interactions: int
    points: list[list[float]]
    labels: list[int]
    box: Optional[list[list[float]]] = Field(description="the object's box prompt [lo, hi], or null")
    voxels: int
    encoder_runs: int
    decoder_runs: int
    cached_crops: int
    expires_in_s: float


class InteractionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    points: Annotated[list[Point], Field(max_length=MAX_POINTS_PER_REQUEST,
                                         description="continuous [k, j, i] voxel indices; "
                                                     "may be empty when a box is given")]
    labels: Annotated[list[Label], Field(max_length=MAX_POINTS_PER_REQUEST,
                                         description="1 positive, 0 negative, one per point")]
    box: Optional[BoxCorners] = Field(default=None, description=(
        "a box prompt (models whose capabilities list 'box'); replaces the object's box"))

    @model_validator(mode="after")
    def _has_a_prompt(self) -> "InteractionRequest":
        if not self.points and self.box is None:
            raise ValueError("give at least one point or a box")
        return self


class MaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bbox: Annotated[list[Index], Field(min_length=2, max_length=2,
                                       description="half-open [[k0, j0, i0], [k1, j1, i1]]")]
    mask: str = Field(strict=True, description="base64(zlib(packbits(mask inside bbox, C order)))")


class Timing(BaseModel):
    encode: float
    decode: float
    total: float


class MaskUpdate(BaseModel):
    bbox: list[list[int]]
    mask: str
    voxels: int
    interaction: int
    encoder_ran: bool
    crops: int
    timing_ms: Timing


class ResetReply(BaseModel):
    session_id: str
    reset: bool


class Metrics(BaseModel):
    sessions: int
    encoder_runs: int
    decoder_runs: int
    interactions: int
    errors: int


ERROR_REPLIES = {status: {"model": ErrorBody} for status in (400, 401, 404, 410, 413, 422, 500, 503, 507)}


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
    except EngineInvalidBox as error:
        raise errors.InvalidBox(str(error)) from None
    except ValueError as error:
        raise BadRequest(str(error)) from None
    except EngineNothingToUndo:
        raise errors.NothingToUndo("there is nothing to undo in this object") from None
    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
        raise errors.OutOfMemory(f"out of memory while predicting: {type(error).__name__}") from None
    except Exception as error:
        # Answered here rather than by the app's last-resort handler, which re-raises to uvicorn
        # and so closes the client's keep-alive connection.
        errors.log.exception("prediction failed")
        raise APIError(f"the prediction failed: {type(error).__name__}: {error}") from None


def create_app(predictor: Predictor | None, settings: ServerSettings = ServerSettings()) -> FastAPI:
    """The API over ``predictor`` (None only to export the OpenAPI schema)."""
    store = SessionStore(settings.max_sessions, settings.session_ttl_s)
    counters = _Counters()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def purge_expired() -> None:  # frees expired sessions' memory without waiting for a request
            while True:
                await asyncio.sleep(min(30.0, max(settings.session_ttl_s / 2, 0.5)))
                len(store)

        task = asyncio.create_task(purge_expired())
        yield
        task.cancel()

    app = FastAPI(title="SAM3DPrompt server", version=__version__, lifespan=lifespan,
                  description="Click-prompted 3D segmentation, API v1. See docs/PROTOCOL.md.")
    install_handlers(app, lambda: counters.add("errors"))
    bearer = HTTPBearer(auto_error=False, description="the server's --api-key, when it has one")

    def authorise(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if settings.api_key is None:
            return
        if credentials is None:
            raise Unauthorized("this server needs an API key")
        if not hmac.compare_digest(credentials.credentials.encode(), settings.api_key.encode()):
            raise Unauthorized("wrong API key")

    secured = [Depends(authorise)]

    def session_of(session_id: str) -> Session:
        return store.get(session_id)

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
            limits=Limits(max_upload_bytes=settings.max_upload_bytes, max_voxels=settings.max_voxels,
                          max_sessions=settings.max_sessions, session_ttl_s=settings.session_ttl_s),
            prompts=["point", "box", "mask"] if config.box_prompt else ["point", "mask"],
            axis_order="kji", compression=list(COMPRESSIONS),
            dtypes=list(DTYPES), auth_required=settings.api_key is not None)

    @app.get("/v1/metrics", response_model=Metrics, dependencies=secured, responses=ERROR_REPLIES,
             tags=["server"])
    def metrics() -> Metrics:
        return Metrics(sessions=len(store), encoder_runs=predictor.encoder_runs,
                       decoder_runs=predictor.decoder_runs, interactions=counters.interactions,
                       errors=counters.errors)

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
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_upload_bytes:
            raise PayloadTooLarge(f"the upload is {declared} bytes; this server accepts at most "
                                  f"{settings.max_upload_bytes}")
        store.check_capacity()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_upload_bytes:
                raise PayloadTooLarge(f"the upload exceeds {settings.max_upload_bytes} bytes")
        array = await run_in_threadpool(decode_volume, bytes(body), dims, dtype, compression)
        session = Session(predictor, array, sizes, cache_size=settings.cache_crops,
                          max_crops=settings.max_crops)
        session_id = store.add(session)
        return SessionCreated(session_id=session_id, shape=list(dims), spacing=list(sizes),
                              expires_in_s=store.expires_in(session_id))

    @app.get("/v1/sessions/{session_id}", response_model=SessionInfo, dependencies=secured,
             responses=ERROR_REPLIES, tags=["sessions"])
    def session_info(session_id: str) -> SessionInfo:
        session = session_of(session_id)
        return SessionInfo(session_id=session_id, shape=list(session.shape), spacing=list(session.spacing),
                           interactions=session.interactions, points=session.points.tolist(),
                           labels=session.labels.tolist(),
                           box=None if session.box is None else session.box.tolist(), voxels=session.voxels,
                           encoder_runs=session.encoder_runs, decoder_runs=session.decoder_runs,
                           cached_crops=len(session.cache), expires_in_s=store.expires_in(session_id))

    @app.delete("/v1/sessions/{session_id}", status_code=204, dependencies=secured,
                responses=ERROR_REPLIES, tags=["sessions"])
    def delete_session(session_id: str) -> Response:
        store.delete(session_id)
        return Response(status_code=204)

    @app.post("/v1/sessions/{session_id}/interactions", response_model=MaskUpdate, dependencies=secured,
              responses=ERROR_REPLIES, tags=["segmentation"])
    def interact(session_id: str, body: InteractionRequest) -> MaskUpdate:
        """Add labelled points (and a box) to the current object; the reply holds the box that changed."""
        session = session_of(session_id)
        if len(body.labels) != len(body.points):
            raise BadRequest(f"{len(body.points)} points but {len(body.labels)} labels; give one label per point")
        change = _run_engine(session.interact, body.points, body.labels, body.box)
        counters.add("interactions")
        return _mask_update(change)

    @app.put("/v1/sessions/{session_id}/mask", response_model=MaskUpdate, dependencies=secured,
             responses=ERROR_REPLIES, tags=["segmentation"])
    def set_mask(session_id: str, body: MaskRequest) -> MaskUpdate:
        """Replace the current object by the user's own mask (zero outside bbox)."""
        session = session_of(session_id)
        lo, hi = tuple(body.bbox[0]), tuple(body.bbox[1])
        if any(h < l for l, h in zip(lo, hi)) or any(h > n for h, n in zip(hi, session.shape)):
            raise BadRequest(f"bbox {list(lo)}..{list(hi)} is not a box inside the volume {list(session.shape)}")
        shape = tuple(h - l for l, h in zip(lo, hi))
        if math.prod(shape) > session.mask.size:
            raise BadRequest("bbox is larger than the volume")
        mask = decode_mask_bits(body.mask, shape)
        return _mask_update(_run_engine(session.set_mask, lo, hi, mask))

    @app.post("/v1/sessions/{session_id}/undo", response_model=MaskUpdate, dependencies=secured,
              responses={**ERROR_REPLIES, 409: {"model": ErrorBody}}, tags=["segmentation"])
    def undo(session_id: str) -> MaskUpdate:
        """Return to the state before the last interaction or mask edit."""
        return _mask_update(_run_engine(session_of(session_id).undo))

    @app.post("/v1/sessions/{session_id}/reset", response_model=ResetReply, dependencies=secured,
              responses=ERROR_REPLIES, tags=["segmentation"])
    def reset(session_id: str) -> ResetReply:
        """Clear the current object (next lesion); the volume and encoder cache stay."""
        session_of(session_id).reset()
        return ResetReply(session_id=session_id, reset=True)

    return app
