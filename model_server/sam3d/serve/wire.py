"""Wire formats of API v1 (docs/PROTOCOL.md), server side: volume uploads and mask bits.

The Slicer client has its own copy of the mask-bits codec (SAM3DPromptLib/protocol.py; it cannot
import this package); the client tests run the two against each other.
"""

from __future__ import annotations

import base64
import binascii
import math
import zlib

import numpy as np

from .errors import BadRequest, PayloadTooLarge

DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
COMPRESSIONS = ("zlib", "none")


def encode_mask_bits(mask: np.ndarray) -> str:
    """base64(zlib(packbits(mask, C order)))."""
    packed = np.packbits(np.ascontiguousarray(mask, dtype=bool).ravel(order="C"))
    return base64.b64encode(zlib.compress(packed.tobytes(), 6)).decode("ascii")


def decode_mask_bits(text: str, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of ``encode_mask_bits`` for a box of ``shape``; BadRequest when it does not fit."""
    count = math.prod(shape)
    expected = (count + 7) // 8
    try:
        packed = zlib.decompressobj().decompress(base64.b64decode(text, validate=True), expected + 1)
    except (binascii.Error, ValueError, zlib.error) as error:
        raise BadRequest(f"mask is not base64(zlib(packbits)) data: {error}") from None
    if len(packed) != expected:
        raise BadRequest(f"mask holds {len(packed)} packed bytes, its box of {count} voxels needs {expected}")
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=count)
    return bits.astype(bool).reshape(shape)


def parse_triple(text: str, name: str, kind: type) -> tuple:
    """'a,b,c' -> a tuple of three ``kind`` values (BadRequest naming the parameter otherwise)."""
    parts = text.split(",")
    try:
        values = tuple(kind(p.strip()) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise BadRequest(f"{name} must be three comma-separated {kind.__name__} values in kji order, got {text!r}")
    return values


def parse_upload_shape(shape: str, spacing: str, max_voxels: int) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Checked (shape, spacing) of a volume upload."""
    dims = parse_triple(shape, "shape", int)
    if min(dims) < 1:
        raise BadRequest(f"shape must be positive, got {list(dims)}")
    sizes = parse_triple(spacing, "spacing", float)
    if not all(math.isfinite(s) and s > 0 for s in sizes):
        raise BadRequest(f"spacing must be positive millimetres, got {list(sizes)}")
    voxels = math.prod(dims)
    if voxels > max_voxels:
        raise PayloadTooLarge(f"the volume has {voxels} voxels; this server accepts at most {max_voxels}")
    return dims, sizes


def decode_volume(body: bytes, shape: tuple[int, int, int], dtype: str, compression: str) -> np.ndarray:
    """The uploaded array; decompression stops at the declared size (no zip bombs)."""
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if compression == "zlib":
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(body, expected)
            beyond = inflater.decompress(inflater.unconsumed_tail, 1)  # output past the declared size
        except zlib.error as error:
            raise BadRequest(f"the body is not zlib data ({error}); send compression=none for raw bytes") from None
        if beyond:
            raise BadRequest(f"the body inflates to more than shape x dtype = {expected} bytes")
        if not inflater.eof:
            raise BadRequest(f"the zlib stream is truncated: {len(raw)} of {expected} bytes")
    else:
        raw = body
    if len(raw) != expected:
        raise BadRequest(f"the volume holds {len(raw)} bytes; shape {list(shape)} of {dtype} needs {expected}")
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest("the volume holds NaN or infinite values")
    return array
