"""A minimal PNG encoder, so the stub backend can write real images without Pillow, and the
check the worker applies to every backend's output before it stores it."""

import struct
import zlib
from collections.abc import Iterable

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RGB_8BIT = (8, 2)  # bit depth, colour type "truecolour"
FILTER_NONE = b"\x00"  # a scanline's bytes as they are
FILTER_UP = b"\x02"  # each byte minus the one above it (mod 256)


def _chunk(kind: bytes, data: bytes) -> bytes:
    """Frame one chunk: length, type, data, and the CRC over type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_rgb(width: int, height: int, rows: Iterable[bytes]) -> bytes:
    """Encode `height` rows of `width` RGB pixels (3 bytes each) as PNG bytes."""
    return encode_scanlines(width, height, (FILTER_NONE + row for row in rows))


def encode_scanlines(width: int, height: int, scanlines: Iterable[bytes]) -> bytes:
    """Encode `height` filtered scanlines, each a filter type byte and `width` * 3 bytes, as PNG
    bytes: a caller that knows its rows repeat (FILTER_UP, the change from the row above) gets
    an image a fraction of the size, for no work here."""
    if width <= 0 or height <= 0:
        raise ValueError(f"PNG size must be positive, got {width}x{height}")
    line_length = 1 + width * 3
    raw = bytearray()
    count = 0
    for line in scanlines:
        if len(line) != line_length:
            raise ValueError(f"row {count} has {len(line) - 1} bytes, expected {line_length - 1}")
        raw += line
        count += 1
    if count != height:
        raise ValueError(f"got {count} rows, expected {height}")
    # One call for the whole image (row by row cost a call per row: the largest share of a no-op
    # stub job's time in the worker), at the fastest level.
    image = zlib.compress(raw, 1)
    header = struct.pack(">IIBBBBB", width, height, *_RGB_8BIT, 0, 0, 0)
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
