"""The GGUF container read directly: metadata as Python values, tensors as views of the mapped file.

`gguf.GGUFReader` builds a numpy view for every part of every metadata field; for a 49,152-token
vocabulary with its merges that is 2.3 s of the first load, where reading the same strings with
`struct` takes a few hundredths. The layout (llama.cpp's `docs/gguf.md`, versions 2 and 3,
little-endian): magic, version, tensor count, key/value count; the key/value pairs; one info per
tensor (name, dims fastest-first, type, offset); tensor data from the next multiple of
`general.alignment` (default 32).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# GGUF value types: 0-7 and 10-12 are scalars, 8 a string, 9 an array of one type.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """The bytes are not a GGUF file this reader understands (says where and why)."""


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's info: `shape` as GGUF lists it (fastest axis first), `data` its raw bytes
    (a uint8 view of the mapped file, no copy)."""
    name: str
    shape: tuple[int, ...]
    tensor_type: int
    data_offset: int
    n_bytes: int
    data: np.ndarray


@dataclass(frozen=True)
class GGUFFile:
    """A GGUF file: `metadata` {key: str | int | float | bool | list}, `tensors` in file order."""
    path: Path
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]


class _Cursor:
    def __init__(self, buf, pos: int):
        self.buf, self.pos = buf, pos

    def unpack(self, fmt: str):
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.pos + n > len(self.buf):
            raise GGUFFormatError(f"a string of {n} bytes runs past the end of the file")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8")

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise GGUFFormatError(f"unknown metadata value type {kind} at byte {self.pos}")
        item, count = self.unpack("<I"), self.unpack("<Q")
        if item in _SCALARS:  # one read for the whole array
            dtype = np.dtype(_SCALARS[item])
            end = self.pos + count * dtype.itemsize
            if end > len(self.buf):
                raise GGUFFormatError(f"an array of {count} values runs past the end of the file")
            values = np.frombuffer(self.buf, dtype, count, self.pos).tolist()
            self.pos = end
            return values
        return [self.value(item) for _ in range(count)]


def read_gguf_file(path) -> GGUFFile:
    """Parse a GGUF file's header and tensor infos; tensor bytes stay in the mapped file.
    Raises GGUFFormatError (not GGUF, an unsupported version, truncated) or OSError."""
    from gguf.constants import GGML_QUANT_SIZES

    path = Path(path)
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
    if buf[:4] != b"GGUF":
        raise GGUFFormatError(f"starts with {bytes(buf[:4])!r}, not the magic b'GGUF'")
    c = _Cursor(buf, 4)  # after the magic
    try:
        version = c.unpack("<I")
        if version not in (2, 3):
            raise GGUFFormatError(f"GGUF version {version} (big-endian, or older than 2); jtlens "
                                  f"reads little-endian versions 2 and 3")
        n_tensors, n_kv = c.unpack("<Q"), c.unpack("<Q")
        metadata = {}
        for _ in range(n_kv):
            key = c.string()
            metadata[key] = c.value(c.unpack("<I"))
        infos = []
        for _ in range(n_tensors):
            name = c.string()
            dims = tuple(c.unpack("<Q") for _ in range(c.unpack("<I")))
            infos.append((name, dims, c.unpack("<I"), c.unpack("<Q")))
    except struct.error:
        raise GGUFFormatError(f"the header ends early (at byte {c.pos} of {len(buf)})") from None
    except UnicodeDecodeError as err:
        raise GGUFFormatError(f"a metadata string is not UTF-8 ({err})") from None
    alignment = metadata.get("general.alignment", 32)
    start = -(-c.pos // alignment) * alignment
    tensors = []
    for name, dims, kind, offset in infos:
        if kind not in GGML_QUANT_SIZES:
            raise GGUFFormatError(f"tensor {name!r} has unknown type {kind}")
        block, block_bytes = GGML_QUANT_SIZES[kind]
        n_bytes = int(np.prod(dims, dtype=np.int64)) // block * block_bytes
        begin = start + offset
        data = (np.frombuffer(buf, np.uint8, n_bytes, begin) if begin + n_bytes <= len(buf)
                else np.zeros(0, np.uint8))  # truncated: read_gguf names it from data_offset
        tensors.append(GGUFTensor(name, dims, kind, begin, n_bytes, data))
    return GGUFFile(path, metadata, tensors)
