"""File checksums."""

from __future__ import annotations

import hashlib
import os

#: Bytes read at a time: multi-GB weights never sit in memory.
HASH_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike, chunk: int = HASH_CHUNK) -> str:
    """Hex sha256 of a file, streamed in ``chunk``-byte pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
