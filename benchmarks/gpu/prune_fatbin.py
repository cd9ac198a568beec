"""Keep one GPU architecture's code in a CUDA library, so that it travels in fewer bytes.

onnxruntime-gpu's CUDA provider (``libonnxruntime_providers_cuda.so``, 284 MB) carries its
kernels for six architectures (sm_75 to sm_120) in the ELF section ``.nv_fatbin``: a run of
fatbin containers, each a header (magic ``0xBA55ED50``, header size, payload size) followed by
entries, each an entry header (kind: 1 PTX, 2 cubin; header size; padded payload size; the
architecture at byte 28) followed by its payload. This zeroes the payload of every entry that is
not for ``sm_KEEP``, in each container that also holds an ``sm_KEEP`` cubin (a container without
one is left whole), in place. Sizes and headers stay as they were, so the loader parses the file
as before and picks the ``sm_KEEP`` cubin; the zeroed bytes compress to almost nothing (the
wheel's 255 MB becomes ~107 MB of xz with the other packages benchmarks/gpu/bundle.sh carries).
The library then runs on that architecture only (an H100 or H200 for 90).

    python benchmarks/gpu/prune_fatbin.py libonnxruntime_providers_cuda.so 90
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

MAGIC = 0xBA55ED50
CUBIN = 2


def fatbin_section(path: Path) -> tuple[int, int]:
    """File offset and size of ``.nv_fatbin`` (from readelf)."""
    table = subprocess.run(  # noqa: S603
        ["readelf", "-S", "-W", str(path)],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(row for row in table.splitlines() if ".nv_fatbin" in row)
    fields = line.split("]", 1)[1].split()  # name, type, address, offset, size, ...
    return int(fields[3], 16), int(fields[4], 16)


def prune(data: bytearray, offset: int, size: int, keep: int) -> tuple[int, int]:
    """Zero the other architectures' payloads in ``data[offset:offset + size]``; returns the
    bytes kept and the bytes zeroed."""
    pos, end, kept, zeroed = offset, offset + size, 0, 0
    while pos + 16 <= end:
        magic, _, header, body = struct.unpack_from("<IHHQ", data, pos)
        if magic != MAGIC:  # alignment padding between containers
            pos += 8
            continue
        entries: list[tuple[int, int, int, int]] = []  # kind, sm, payload start, payload size
        entry, stop = pos + header, pos + header + body
        while entry < stop:
            kind, _, entry_header, padded = struct.unpack_from("<HHIQ", data, entry)
            sm = struct.unpack_from("<I", data, entry + 28)[0]
            entries.append((kind, sm, entry + entry_header, padded))
            entry += entry_header + padded
        if any(kind == CUBIN and sm == keep for kind, sm, _, _ in entries):
            for _, sm, start, length in entries:
                if sm == keep:
                    kept += length
                else:
                    data[start : start + length] = bytes(length)
                    zeroed += length
        pos = stop
    return kept, zeroed


def main() -> None:
    path, keep = Path(sys.argv[1]), int(sys.argv[2])
    offset, size = fatbin_section(path)
    data = bytearray(path.read_bytes())
    kept, zeroed = prune(data, offset, size, keep)
    path.write_bytes(data)
    print(f"kept {kept / 1e6:.1f} MB of sm_{keep} code, zeroed {zeroed / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
