"""The sha256 that names a model file across services (ADR 0010).

The trainer tags a version with its ONNX file's digest (``onnx_sha256``), the registry-bridge
checks and ships it, ``ModelPromoted`` carries it and inference refuses a file that differs:
all of them compute it here, as lower-case hex.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data`` as 64 lower-case hex digits."""
    return hashlib.sha256(data).hexdigest()


def file_sha256_hex(path: Path) -> str:
    """:func:`sha256_hex` of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
