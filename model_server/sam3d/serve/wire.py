"""Wire formats of API v1 (docs/PROTOCOL.md), server side: volume uploads and mask bits.

Masks are encoded with the client's codec (sam3d.client.wire, the copy of the Slicer module's
SAM3DPromptLib/wire.py); uploads and masks sent by a client are decoded here, with the checks a
server needs against hostile input.
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
SPACING_RANGE_MM = (1e-3, 1e4)  # voxel sizes a medical image can have
CHUNK_BYTES = 4 << 20  # volume bytes inflated / converted per step (bounded memory, frequent GIL release)
FLOAT32_MAX = float(np.finfo(np.float32).max)


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
    low, high = SPACING_RANGE_MM
    if not all(low <= s <= high for s in sizes):
        raise BadRequest(f"spacing {list(sizes)} mm is outside {low:g}..{high:g} mm per voxel; send the "
                         "image's spacing in millimetres")
    voxels = math.prod(dims)
    if voxels > max_voxels:
        raise PayloadTooLarge(f"the volume has {voxels} voxels; this server accepts at most {max_voxels}")
    return dims, sizes


def decode_volume(body: bytes | bytearray, shape: tuple[int, int, int], dtype: str,
                  compression: str) -> np.ndarray:
    """The uploaded array, inflated and converted in chunks of CHUNK_BYTES (float64 is stored as
    float32; values beyond float32 are refused). Inflation stops at the declared size: a body
    that inflates further is a decompression bomb (413); trailing bytes after the stream, a
    truncated stream and non-finite values are refused (400)."""
    wire = np.dtype(dtype).newbyteorder("<")
    expected = math.prod(shape) * wire.itemsize
    out = np.empty(math.prod(shape), dtype=np.float32 if dtype == "float64" else wire.newbyteorder("="))
    filled, carry = 0, b""
    for piece in _raw_chunks(body, expected, compression):
        data = carry + piece if carry else piece
        usable = len(data) - len(data) % wire.itemsize
        values = np.frombuffer(data, dtype=wire, count=usable // wire.itemsize)
        if len(values):
            out[filled:filled + len(values)] = _checked(values)
        filled += len(values)
        carry = bytes(data[usable:])
    return out.reshape(shape)


def _raw_chunks(body: bytes | bytearray, expected: int, compression: str):
    """The volume's raw bytes in pieces of at most CHUNK_BYTES, checked against ``expected``."""
    view = memoryview(body)
    if compression == "none":
        if len(view) != expected:
            raise BadRequest(f"the body holds {len(view)} bytes; shape x dtype needs {expected}")
        for start in range(0, expected, CHUNK_BYTES):
            yield view[start:start + CHUNK_BYTES]
        return
    inflater, produced, pending = zlib.decompressobj(), 0, view
    try:
        while produced < expected:
            piece = inflater.decompress(pending, min(CHUNK_BYTES, expected - produced))
            pending = inflater.unconsumed_tail
            if not piece:
                break
            produced += len(piece)
            yield piece
        beyond = inflater.decompress(pending, 1)  # output past the declared size
    except zlib.error as error:
        raise BadRequest(f"the body is not zlib data ({error}); send compression=none for raw bytes") from None
    if beyond or (inflater.eof and produced > expected):
        raise PayloadTooLarge(f"the body inflates to more than shape x dtype = {expected} bytes "
                              "(a decompression bomb?)")
    if produced < expected:
        raise BadRequest(f"the volume holds {produced} bytes; shape x dtype needs {expected}")
    if not inflater.eof:
        raise BadRequest(f"the zlib stream does not end after the volume's {expected} bytes (truncated?)")
    if inflater.unused_data:
        raise BadRequest(f"{len(inflater.unused_data)} bytes follow the zlib stream; send the volume alone")


def _checked(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise BadRequest("the volume holds NaN or infinite values")
        if values.dtype.itemsize > 4 and np.abs(values).max() > FLOAT32_MAX:
            raise BadRequest("the float64 volume holds values beyond float32's range (3.4e38), which the "
                             "server computes in; rescale the image")
    return values
