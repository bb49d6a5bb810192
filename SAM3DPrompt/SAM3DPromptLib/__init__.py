"""Torch-free helpers of the SAM3DPrompt Slicer module: the HTTP client and its wire format."""

from .client import (
    AccessRefused,
    AuthenticationError,
    BadRequest,
    IncompatibleServer,
    InvalidBox,
    InvalidServerURL,
    MaskUpdate,
    NothingToUndo,
    PayloadTooLarge,
    RequestTimedOut,
    SAM3DClient,
    SAM3DError,
    ServerAtCapacity,
    ServerError,
    ServerOutOfMemory,
    ServerUnreachable,
    SessionExpired,
    SessionLimitReached,
    SessionNotFound,
    TLSError,
)

__all__ = [
    "AccessRefused", "AuthenticationError", "BadRequest", "IncompatibleServer", "InvalidBox", "InvalidServerURL", "MaskUpdate",
    "NothingToUndo", "PayloadTooLarge", "RequestTimedOut", "SAM3DClient", "SAM3DError",
    "ServerAtCapacity", "ServerError", "ServerOutOfMemory", "ServerUnreachable",
    "SessionExpired", "SessionLimitReached", "SessionNotFound", "TLSError",
]
