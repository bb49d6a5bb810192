"""Torch-free client of the `sam3d serve` HTTP API v1 (numpy, requests and stdlib only).

Runs inside Slicer's Python (3.9+). Every failure is raised as a subclass of ``SAM3DError``
whose message says what happened and what to do; ``error.hint`` holds the second half.
Arrays and points are in (k, j, i) order, as ``slicer.util.arrayFromVolume`` returns them.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence
from urllib.parse import urlparse

import numpy as np
import requests

from .wire import API_VERSION, Index3, decode_mask_bits, encode_mask_bits, mask_bbox, upload_dtype


class SAM3DError(Exception):
    """Base class of every client error. ``str(error)`` is a complete user-facing message:
    what happened (``message``, from the server when it sent one) and what to do (``hint``,
    written for the Slicer user; ``server_hint`` keeps the server's own)."""

    status: Optional[int] = None
    default_hint = ""

    def __init__(self, message: str, server_hint: str = "", status: Optional[int] = None,
                 code: str = ""):
        self.message = message
        self.hint = self.default_hint or server_hint
        self.server_hint = server_hint
        if status is not None:
            self.status = status
        self.code = code
        text = message.strip()
        if text and text[-1] not in ".?!":
            text += "."
        super().__init__(f"{text} {self.hint}" if self.hint else text)


class InvalidServerURL(SAM3DError):
    default_hint = "Enter the server address with its scheme, e.g. http://127.0.0.1:8000"


class ServerUnreachable(SAM3DError):
    default_hint = "Start the server with `sam3d serve` or check the address and port."


class TLSError(SAM3DError):
    default_hint = ("The server's https certificate is not trusted here: give its certificate or CA "
                    "bundle file (Server > Certificate in the SAM3D Prompt module; a self-signed server "
                    "certificate works too), or reach the server through an SSH tunnel.")


class RequestTimedOut(SAM3DError):
    default_hint = ("The server is busy, still starting (at its first start on a machine it compiles its "
                    "encoder for up to two minutes; it prints 'encoder compiled' when ready), or the network "
                    "is slow; try again, or raise the timeout (Server > Timeout in the SAM3D Prompt module).")


class IncompatibleServer(SAM3DError):
    default_hint = "Update the SAM3DPrompt extension or the server so that both speak API v1."


class AuthenticationError(SAM3DError):
    status = 401
    default_hint = "Enter the API key the server was started with (--api-key / SAM3D_API_KEY)."


class SessionNotFound(SAM3DError):
    status = 404
    default_hint = "The server does not know this session (was it restarted?); upload the volume again."


class SessionExpired(SAM3DError):
    status = 410
    default_hint = "The session expired after a period without use; upload the volume again."


class NothingToUndo(SAM3DError):
    status = 409
    default_hint = "There is no earlier interaction to undo."


class PayloadTooLarge(SAM3DError):
    status = 413
    default_hint = ("Crop the volume to the region of interest, or start the server with a "
                    "higher --max-upload-bytes / --max-voxels.")


class AccessRefused(SAM3DError):
    status = 403
    default_hint = ("The server refused this client (host name, web origin or too many wrong API keys); "
                    "see docs/SECURITY.md.")


class SessionLimitReached(SAM3DError):
    status = 409
    default_hint = "The object reached the server's limit of clicks or interactions; start the next object."


class ServerAtCapacity(SAM3DError):
    status = 503
    default_hint = "The server holds its maximum number of sessions; retry later or close a session."


class ServerOutOfMemory(SAM3DError):
    status = 507
    default_hint = ("The server ran out of memory or its memory budget; the session is unchanged. Close "
                    "other sessions or crop the volume.")


class BadRequest(SAM3DError):
    status = 400
    default_hint = "The request was rejected as invalid; check the clicked points lie inside the volume."


class InvalidBox(SAM3DError):
    status = 422
    default_hint = ("Draw the box around the object inside the volume, or use clicks when the "
                    "server's model has no box prompt.")


class ServerError(SAM3DError):
    status = 500
    default_hint = "The server failed on this request; the session is unchanged. See the server log."


# Error code of the JSON body (docs/PROTOCOL.md) -> exception class.
_ERRORS_BY_CODE = {
    "unauthorized": AuthenticationError,
    "session_not_found": SessionNotFound,
    "session_expired": SessionExpired,
    "nothing_to_undo": NothingToUndo,
    "payload_too_large": PayloadTooLarge,
    "server_at_capacity": ServerAtCapacity,
    "out_of_memory": ServerOutOfMemory,
    "memory_budget_exceeded": ServerOutOfMemory,
    "session_limit": SessionLimitReached,
    "host_not_allowed": AccessRefused,
    "origin_not_allowed": AccessRefused,
    "too_many_auth_failures": AccessRefused,
    "bad_request": BadRequest,
    "invalid_box": InvalidBox,
    "validation_error": BadRequest,
    "internal_error": ServerError,
}
_ERRORS_BY_STATUS = {401: AuthenticationError, 404: SessionNotFound, 409: NothingToUndo,
                     410: SessionExpired, 413: PayloadTooLarge, 400: BadRequest, 422: BadRequest,
                     503: ServerAtCapacity, 507: ServerOutOfMemory}


@dataclass
class MaskUpdate:
    """What one request changed: the object's mask inside the half-open box [lo, hi)."""

    lo: Index3
    hi: Index3
    mask: np.ndarray  # bool, shape hi - lo
    voxels: int  # foreground voxels of the whole object after the change
    interaction: int = 0
    encoder_ran: bool = False
    crops: int = 0  # model crops predicted for this request
    timing_ms: Dict[str, float] = field(default_factory=dict)
    wire_bytes: int = 0  # size of the HTTP reply body that carried this update

    @property
    def is_empty(self) -> bool:
        """True when nothing changed."""
        return any(h <= l for l, h in zip(self.lo, self.hi))

    def apply_to(self, full: np.ndarray) -> np.ndarray:
        """Write the box into ``full`` (the whole volume's mask, kji) in place and return it."""
        if not self.is_empty:
            box = tuple(slice(l, h) for l, h in zip(self.lo, self.hi))
            full[box] = self.mask
        return full

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "MaskUpdate":
        lo = tuple(int(v) for v in body["bbox"][0])
        hi = tuple(int(v) for v in body["bbox"][1])
        shape = tuple(max(h - l, 0) for l, h in zip(lo, hi))
        return cls(lo=lo, hi=hi, mask=decode_mask_bits(body["mask"], shape),
                   voxels=int(body["voxels"]), interaction=int(body.get("interaction", 0)),
                   encoder_ran=bool(body.get("encoder_ran", False)), crops=int(body.get("crops", 0)),
                   timing_ms=dict(body.get("timing_ms", {})))


class SAM3DClient:
    """One server connection. Thread-compatible: use one client per worker thread."""

    def __init__(self, base_url: str, api_key: Optional[str] = None, timeout: float = 30.0,
                 ca_bundle: Optional[str] = None):
        """``ca_bundle``: for an https server, the certificate (or CA bundle) file to trust
        instead of the system's; None trusts the system's CAs."""
        parsed = urlparse(base_url.strip()) if isinstance(base_url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidServerURL(f"{base_url!r} is not a server address.")
        self.base_url = base_url.strip().rstrip("/")
        self.api_key = api_key or None
        self.timeout = float(timeout)
        if ca_bundle and not os.path.isfile(ca_bundle):
            raise TLSError(f"The certificate file {ca_bundle!r} does not exist.")
        self.ca_bundle = ca_bundle or None
        self._http = requests.Session()
        # Passed with every request: a Session's own verify loses to $REQUESTS_CA_BUNDLE.
        self._verify: Any = ca_bundle or True

    # -- plumbing -------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url + path
        try:
            response = self._http.request(method, url, headers=headers, timeout=self.timeout,
                                          verify=self._verify, **kwargs)
        except requests.exceptions.Timeout:
            raise RequestTimedOut(f"The server at {self.base_url} did not answer within "
                                  f"{self.timeout:g} s.") from None
        except requests.exceptions.SSLError as error:
            raise TLSError(f"The https connection to {self.base_url} failed: {error}.") from None
        except requests.exceptions.InvalidURL as error:
            raise InvalidServerURL(f"{self.base_url!r} is not a valid server address ({error}).") from None
        except requests.exceptions.ConnectionError:
            raise ServerUnreachable(f"Cannot connect to {self.base_url}: is `sam3d serve` "
                                    f"running at {self.base_url}?") from None
        if response.status_code >= 400:
            raise self._error(response)
        return response

    def _error(self, response: requests.Response) -> SAM3DError:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "error" not in body:
            if status == 404:  # not our JSON: some other web server answers at this address
                return InvalidServerURL(f"{self.base_url} answered {status} without a SAM3D "
                                        "error body; is this the address of `sam3d serve`?",
                                        status=status)
            return ServerError(f"The server answered HTTP {status}.", status=status)
        code = str(body.get("error", ""))
        cls = _ERRORS_BY_CODE.get(code) or _ERRORS_BY_STATUS.get(status, ServerError)
        return cls(str(body.get("message", f"HTTP {status}")), str(body.get("hint", "")),
                   status=status, code=code)

    def _json(self, method: str, path: str, **kwargs: Any) -> Dict[str, Any]:
        return self._request(method, path, **kwargs).json()

    def _update(self, method: str, path: str, **kwargs: Any) -> MaskUpdate:
        response = self._request(method, path, **kwargs)
        update = MaskUpdate.from_json(response.json())
        update.wire_bytes = len(response.content)
        return update

    # -- API ------------------------------------------------------------------------------
    def health(self) -> Dict[str, Any]:
        """``{"status": "ok", "api_version": "1"}``; needs no API key."""
        return self._json("GET", "/v1/health")

    def capabilities(self) -> Dict[str, Any]:
        """Model, device, limits and prompts of the server; raises IncompatibleServer unless API v1."""
        body = self._json("GET", "/v1/capabilities")
        if str(body.get("api_version")) != API_VERSION:
            raise IncompatibleServer(f"The server speaks API version {body.get('api_version')!r}, "
                                     f"this client speaks {API_VERSION!r}.")
        return body

    def create_session(self, array: np.ndarray, spacing_kji: Sequence[float]) -> str:
        """Upload a (k, j, i) volume with its spacing in mm; returns the new session id."""
        array = np.asarray(array)
        if array.ndim != 3:
            raise BadRequest(f"The volume must be 3D, got shape {array.shape}.",
                             "Select a scalar volume (not a 2D image or a vector volume).")
        if len(spacing_kji) != 3:
            raise BadRequest(f"spacing needs 3 values in kji order, got {list(spacing_kji)}.")
        data = upload_dtype(array)
        params = {"shape": ",".join(str(n) for n in data.shape), "dtype": data.dtype.name,
                  "spacing": ",".join(repr(float(s)) for s in spacing_kji),
                  "compression": "zlib"}
        body = zlib.compress(data.tobytes(), 1)
        reply = self._json("POST", "/v1/sessions", params=params, data=body,
                           headers={"Content-Type": "application/octet-stream"})
        return str(reply["session_id"])

    def interact(self, session_id: str, points_kji: Sequence[Sequence[float]],
                 labels: Sequence[int],
                 box_kji: Optional[Sequence[Sequence[float]]] = None) -> MaskUpdate:
        """Add clicks (kji voxel indices; label 1 positive, 0 negative) and optionally a box (two
        opposite kji corners; it replaces the object's box) to the current object. Raises
        InvalidBox when the server's model has no box prompt (capabilities ``prompts``)."""
        body: Dict[str, Any] = {"points": [[float(v) for v in p] for p in points_kji],
                                "labels": [int(v) for v in labels]}
        if box_kji is not None:
            body["box"] = [[float(v) for v in corner] for corner in box_kji]
        return self._update("POST", f"/v1/sessions/{session_id}/interactions", json=body)

    def set_mask(self, session_id: str, mask: np.ndarray) -> MaskUpdate:
        """Replace the current object by the user's own full-volume mask (sends only its box)."""
        mask = np.asarray(mask, dtype=bool)
        lo, hi = mask_bbox(mask)
        box = tuple(slice(l, h) for l, h in zip(lo, hi))
        body = {"bbox": [list(lo), list(hi)], "mask": encode_mask_bits(mask[box])}
        return self._update("PUT", f"/v1/sessions/{session_id}/mask", json=body)

    def undo(self, session_id: str) -> MaskUpdate:
        """Undo the last interaction or mask edit; raises NothingToUndo when there is none."""
        return self._update("POST", f"/v1/sessions/{session_id}/undo")

    def reset(self, session_id: str) -> None:
        """Start the next object: clear points, mask and history; keep the volume and cache."""
        self._json("POST", f"/v1/sessions/{session_id}/reset")

    def delete_session(self, session_id: str) -> None:
        """Free the session on the server."""
        self._request("DELETE", f"/v1/sessions/{session_id}")

    def session_info(self, session_id: str) -> Dict[str, Any]:
        """Shape, interactions, points, encoder / decoder runs and expiry of a session."""
        return self._json("GET", f"/v1/sessions/{session_id}")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "SAM3DClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
