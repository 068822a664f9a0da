"""Input tokens of an image by each provider's published rule, and an image's size read
from the first bytes of its base64 payload (the payload is never decoded whole or copied).

- OpenAI (`openai-chat`, `openai-responses`): `detail: low` is 85 tokens; otherwise the
  image is scaled to fit 2048×2048, then its shorter side to 768 pixels, and costs 85 +
  170 per 512-pixel tile.
- Anthropic: an image whose long edge exceeds 1568 pixels is scaled down to it; tokens =
  width × height / 750.
- Gemini: an image within 384×384 is 258 tokens; a larger one is cut into 768×768 tiles of
  258 tokens each.

When the size cannot be read (a URL, a file id, a format whose header is not in the first
`HEADER_BYTES` bytes), the image is taken as `DEFAULT_SIZE` (1024×1024) under the same rule.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct

DEFAULT_SIZE = (1024, 1024)
HEADER_BYTES = 3072  # decoded from the front of a payload to find the size: 4,096 characters


def openai_tokens(size: tuple[int, int] | None, detail: str | None = None) -> int:
    if detail == "low":
        return 85
    width, height = size or DEFAULT_SIZE
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    shorter = min(width, height)
    if shorter > 768:
        width, height = width * 768 / shorter, height * 768 / shorter
    tiles = math.ceil(width / 512) * math.ceil(height / 512)
    return 85 + 170 * tiles


def anthropic_tokens(size: tuple[int, int] | None) -> int:
    width, height = size or DEFAULT_SIZE
    longer = max(width, height)
    if longer > 1568:
        width, height = width * 1568 / longer, height * 1568 / longer
    return math.ceil(width * height / 750)


def gemini_tokens(size: tuple[int, int] | None) -> int:
    width, height = size or DEFAULT_SIZE
    if width <= 384 and height <= 384:
        return 258
    return math.ceil(width / 768) * math.ceil(height / 768) * 258


_URL_SAFE = str.maketrans("-_", "+/")


def base64_size(payload: str, start: int = 0) -> tuple[int, int] | None:
    """The (width, height) of a PNG, GIF, WebP or JPEG image from the base64 text
    `payload[start:]`, reading only its first `HEADER_BYTES` bytes; None when not found."""
    head = _decode(payload[start : start + 64])  # PNG, GIF and WebP say it in 48 bytes
    if head[:2] == b"\xff\xd8":  # a JPEG's size comes after its other segments
        head = _decode(payload[start : start + HEADER_BYTES // 3 * 4])
    return image_size(head)


def _decode(chunk: str) -> bytes:
    if "-" in chunk or "_" in chunk:  # the URL-safe alphabet (Google's SDK sends it)
        chunk = chunk.translate(_URL_SAFE)
    try:
        return base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=False)
    except (binascii.Error, ValueError):
        return b""


def image_size(head: bytes) -> tuple[int, int] | None:
    """The size of an image from its first bytes, or None."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
    elif head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        width, height = struct.unpack("<HH", head[6:10])
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        kind = head[12:16]
        if kind == b"VP8 ":
            width, height = (v & 0x3FFF for v in struct.unpack("<HH", head[26:30]))
        elif kind == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        elif kind == b"VP8X":
            width = int.from_bytes(head[24:27], "little") + 1
            height = int.from_bytes(head[27:30], "little") + 1
        else:
            return None
    elif head[:2] == b"\xff\xd8":
        found = _jpeg_size(head)
        if found is None:
            return None
        width, height = found
    else:
        return None
    if width <= 0 or height <= 0:
        return None
    return width, height


_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 4 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = int.from_bytes(head[at + 2 : at + 4], "big")
        if marker in _SOF:
            if at + 9 > len(head):
                return None
            height, width = struct.unpack(">HH", head[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None
