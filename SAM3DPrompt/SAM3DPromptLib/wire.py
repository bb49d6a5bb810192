"""Wire format of the SAM3DPrompt HTTP API v1, client side (numpy and stdlib only).

See docs/PROTOCOL.md: arrays travel in C order with axes (k, j, i); a mask travels as
base64(zlib(numpy.packbits(mask.ravel()))) together with its half-open bounding box.
The sam3d package carries a generated copy of this file (sam3d/client/wire.py, written by
scripts/sync_client.py): its server encodes masks and checks points with it.
"""

from __future__ import annotations

import base64
import ipaddress
import zlib
from typing import Sequence, Tuple

import numpy as np

API_VERSION = "1"
# numpy dtype names the server accepts for an uploaded volume.
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
# dtypes converted before upload (numpy name -> wire name).
DTYPE_CONVERSIONS = {"bool": "uint8", "int64": "int32", "uint64": "uint32", "float16": "float32"}

Index3 = Tuple[int, int, int]


def encode_mask_bits(mask: np.ndarray) -> str:
    """Pack a boolean array (C order) into the wire's base64 text."""
    packed = np.packbits(np.ascontiguousarray(mask, dtype=bool).ravel(order="C"))
    return base64.b64encode(zlib.compress(packed.tobytes(), 6)).decode("ascii")


def decode_mask_bits(text: str, shape: Sequence[int]) -> np.ndarray:
    """Unpack the wire's base64 text into a boolean array of ``shape``."""
    count = int(np.prod(shape)) if len(shape) else 0
    packed = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8)
    if packed.size * 8 < count:
        raise ValueError(f"mask bits hold {packed.size * 8} values, the box needs {count}")
    return np.unpackbits(packed, count=count).astype(bool).reshape(tuple(shape))


def outside_volume(points_kji: Sequence[Sequence[float]], shape: Sequence[int]) -> np.ndarray:
    """Boolean ``[N]``: which continuous kji points lie outside the voxel grid, i.e. more than
    half a voxel beyond its edge voxels' centres (the server refuses those)."""
    points = np.asarray(points_kji, dtype=np.float64).reshape(-1, 3)
    upper = np.asarray(shape, dtype=np.float64) - 0.5
    return np.any((points < -0.5) | (points > upper), axis=1)


def upload_dtype(array: np.ndarray) -> np.ndarray:
    """The array in a dtype the server accepts (little-endian, C order)."""
    name = array.dtype.name
    if name in DTYPE_CONVERSIONS:
        array = array.astype(DTYPE_CONVERSIONS[name])
    elif name not in DTYPES:
        raise ValueError(f"cannot upload an array of dtype {name}; use one of {', '.join(DTYPES)}")
    return np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))


def mask_bbox(mask: np.ndarray) -> Tuple[Index3, Index3]:
    """Half-open bounding box (lo, hi) of the true voxels of a 3D mask; lo == hi when empty."""
    if not mask.any():
        return (0, 0, 0), (0, 0, 0)
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        lo.append(int(hits[0]))
        hi.append(int(hits[-1]) + 1)
    return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine only (localhost, 127.0.0.0/8, ::1): the
    rule by which the server and the web app may run without a key."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
