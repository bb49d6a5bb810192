"""Request and reply bodies of API v1: the wire contract in one place (docs/PROTOCOL.md).

No `from __future__ import annotations` here: pydantic reads the annotations at runtime.
"""

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_POINTS_PER_REQUEST = 1000
SHAPE_PATTERN = r"^\d+,\d+,\d+$"
SPACING_PATTERN = r"^[0-9.eE+-]+,[0-9.eE+-]+,[0-9.eE+-]+$"
SESSION_ID = r"^[A-Za-z0-9_-]{1,64}$"

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
    sha256: str  # the checkpoint file's SHA-256: which trained weights answer
    slice_precision: str  # the 2D pathway's arithmetic, "fp32" or "bf16": their answers differ slightly
    click_pathway: str  # who answers an object's first click (one of engine.choices.CLICK_PATHWAYS)


class Limits(BaseModel):
    max_upload_bytes: int
    max_json_bytes: int
    max_voxels: int
    max_sessions: int
    session_ttl_s: float
    evict_idle_s: float
    max_memory_bytes: int
    max_session_memory_bytes: int
    max_undo_bytes: int
    max_points: int
    max_interactions: int
    max_points_per_request: int


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
    memory_bytes: int = Field(description="the most this session may hold (its share of the budget)")


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
    slice_windows: int = Field(default=0, description="2D pathway slice windows the session keeps embedded")
    slice_windows_ahead: int = Field(default=0, description=(
        "of those, windows embedded in idle time for the next correction, not used yet"))
    memory_bytes: int = Field(description="bytes the session holds now")
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


class Memory(BaseModel):
    budget_bytes: int
    reserved_bytes: int = Field(description="the most the sessions (and uploads under way) may hold")
    used_bytes: int = Field(description="what the sessions hold now")
    resident_bytes: int = Field(description="the server process's resident memory")


class Metrics(BaseModel):
    sessions: int
    encoder_runs: int
    decoder_runs: int
    interactions: int
    errors: int
    memory: Memory


ERROR_REPLIES = {status: {"model": ErrorBody}
                 for status in (400, 401, 403, 404, 409, 410, 413, 422, 429, 500, 503, 507)}
