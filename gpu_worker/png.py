"""A minimal PNG encoder, so the stub backend can write real images without Pillow, and the
check the worker applies to every backend's output before it stores it."""

import struct
import zlib
from collections.abc import Iterable

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RGB_8BIT = (8, 2)  # bit depth, colour type "truecolour"


def _chunk(kind: bytes, data: bytes) -> bytes:
    """Frame one chunk: length, type, data, and the CRC over type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_rgb(width: int, height: int, rows: Iterable[bytes]) -> bytes:
    """Encode `height` rows of `width` RGB pixels (3 bytes each) as PNG bytes."""
    if width <= 0 or height <= 0:
        raise ValueError(f"PNG size must be positive, got {width}x{height}")
    row_length = width * 3
    compressor = zlib.compressobj()
    parts: list[bytes] = []
    count = 0
    for row in rows:
        if len(row) != row_length:
            raise ValueError(f"row {count} has {len(row)} bytes, expected {row_length}")
        parts.append(compressor.compress(b"\x00" + row))  # filter type 0: the row as is
        count += 1
    if count != height:
        raise ValueError(f"got {count} rows, expected {height}")
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, *_RGB_8BIT, 0, 0, 0)
    image = b"".join(parts)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", image) + _chunk(b"IEND", b"")


def problem(data: object) -> str | None:
    """Why `data` is not a PNG image (signature, then an IHDR chunk), or None when it is one.

    A backend's output is checked before it is stored, so a bad one fails its job with a
    message a user can read instead of a refusal from the database.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        return f"expected bytes, got {type(data).__name__}"
    head = bytes(data[:16])
    if not head.startswith(_SIGNATURE):
        return f"{len(data)} bytes without the PNG signature (they start {head[:8]!r})"
    if head[12:16] != b"IHDR":
        return "the PNG signature is not followed by an IHDR chunk"
    return None
