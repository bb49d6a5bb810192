"""The HTTP API v1 (docs/PROTOCOL.md) as a FastAPI application over the engine: the app factory
(middleware, error handlers, the routes of ``routes.py``, housekeeping)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .. import __version__
from ..engine.predictor import Predictor
from .errors import install_handlers
from .guard import Guard, GuardSettings
from .lanes import EngineLanes
from .memory import feature_bytes, slice_window_bytes
from .routes import ServerState, public, router
from .sessions import SessionStore
from .settings import ServerSettings


def _low_priority_thread() -> None:
    """Lower the calling thread's CPU priority (Linux: per thread) so that inflating uploads
    yields the cores to other users' clicks."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def create_app(predictor: Predictor | None, settings: ServerSettings = ServerSettings(),
               lanes: EngineLanes | None = None) -> FastAPI:
    """The API over ``predictor`` (None only to export the OpenAPI schema); engine calls run on
    ``lanes`` (new ones with torch's current thread count when not given; see lanes.py)."""
    lanes = lanes or EngineLanes(torch.get_num_threads())
    state = ServerState(
        predictor, settings,
        SessionStore(settings.max_sessions, settings.session_ttl_s, settings.max_memory_bytes, settings.evict_idle_s),
        # measured with one encoder run on the main lane: torch work on any other thread starts a
        # second OpenMP team, which slows every later engine call (lanes.py)
        crop_bytes=lanes.run_on_main(feature_bytes, predictor) if predictor is not None else 0,
        window_bytes=slice_window_bytes(predictor) if predictor is not None else 0,
        # Uploads are inflated one at a time, off the event loop, at low priority.
        upload_pool=ThreadPoolExecutor(1, thread_name_prefix="sam3d-upload", initializer=_low_priority_thread),
        lanes=lanes)
    app = FastAPI(title="SAM3DPrompt server", version=__version__, lifespan=_housekeeping,
                  description="Click-prompted 3D segmentation, API v1. See docs/PROTOCOL.md and docs/SECURITY.md.")
    app.state.server = state
    install_handlers(app, lambda: state.counters.add("errors"))
    app.add_middleware(Guard, settings=GuardSettings(
        api_key=settings.api_key, allowed_hosts=settings.allowed_hosts, cors_origins=settings.cors_origins,
        max_upload_bytes=settings.max_upload_bytes, max_json_bytes=settings.max_json_bytes,
        auth_failures_per_minute=settings.auth_failures_per_minute))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])
    app.include_router(public)
    app.include_router(router)
    return app


@contextlib.asynccontextmanager
async def _housekeeping(app: FastAPI):
    """While the app runs, purge expired sessions regularly (frees their memory without waiting
    for a request); on shutdown stop the upload worker and the engine lanes."""
    state: ServerState = app.state.server

    async def purge_expired() -> None:
        while True:
            await asyncio.sleep(min(30.0, max(state.settings.session_ttl_s / 2, 0.5)))
            state.store.purge()

    task = asyncio.create_task(purge_expired())
    yield
    task.cancel()
    state.upload_pool.shutdown(wait=False, cancel_futures=True)
    state.lanes.shutdown()
