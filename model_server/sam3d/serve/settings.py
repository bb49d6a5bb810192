"""Limits and access control of one server (every one is a `sam3d serve` option)."""

from __future__ import annotations

from dataclasses import dataclass

from .guard import LOOPBACK_HOSTS

MIB = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    api_key: str | None = None
    max_sessions: int = 8
    session_ttl_s: float = 1800.0
    evict_idle_s: float = 120.0  # at capacity, a session idle this long makes room for a new one
    max_upload_bytes: int = 1 << 30  # a volume upload as sent (compressed)
    max_json_bytes: int = 16 * MIB  # every other body (clicks, a user's mask)
    max_voxels: int = 1 << 28
    max_memory_bytes: int = 4 << 30  # all sessions together; `sam3d serve` defaults to half the free memory
    max_session_memory_bytes: int = 2 << 30
    max_undo_bytes: int = 64 * MIB  # undo history per object (oldest dropped first)
    max_points: int = 256  # points per object
    max_interactions: int = 1000  # interactions per object
    cache_crops: int = 8  # encoded crops kept per session (at least max_crops)
    max_crops: int = 6  # crops predicted per interaction
    click_pathway: str = "3d"  # who answers an object's first click (engine.choices.CLICK_PATHWAYS)
    idle_prefetch: bool = True  # embed the next 2D correction's windows while no request runs
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host header names served ("*": any)
    cors_origins: tuple[str, ...] = ()  # web origins allowed to call the API
    auth_failures_per_minute: int = 10  # 401s per client address before 429
