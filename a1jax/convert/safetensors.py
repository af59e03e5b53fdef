"""A minimal reader and writer for the safetensors format, so that the training environment needs no torch.

File layout (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length N, then N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the raw little-endian,
C-ordered tensor bytes; offsets count from the end of the header. The reader memory-maps the file and hands out one
tensor at a time, so a 70 GB checkpoint is never read into memory as a whole.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit; guards against reading garbage as a length


def dtype_name(dtype) -> str:
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
    if dt not in _NAMES:
        raise ValueError(f"safetensors cannot store dtype {dtype}; supported: {sorted(_NAMES.values())}")
    return _NAMES[dt]


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """(header without `__metadata__`, byte offset where the data starts)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or n > os.path.getsize(path) - 8:
            raise ValueError(f"{path}: not a safetensors file (header length {n} is out of range)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: unreadable safetensors header: {e}") from None
    header.pop("__metadata__", None)
    for name, info in header.items():
        if info.get("dtype") not in DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
    return header, 8 + n


def tensor_infos(path: str | os.PathLike) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """name -> (dtype, shape), read from the header only."""
    header, _ = read_header(path)
    return {k: (DTYPES[v["dtype"]], tuple(v["shape"])) for k, v in header.items()}


def iter_tensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (name, read-only array backed by the memory-mapped file), in file order."""
    header, start = read_header(path)
    size = os.path.getsize(path)
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > start else np.zeros((0,), np.uint8)
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        dtype, shape = DTYPES[info["dtype"]], tuple(info["shape"])
        begin, end = info["data_offsets"]
        if end - begin != dtype.itemsize * int(np.prod(shape)) or start + end > size:
            raise ValueError(f"{path}: tensor {name!r} ({info['dtype']} {list(shape)}) has inconsistent data_offsets "
                             f"{[begin, end]} (file size {size})")
        yield name, data[start + begin:start + end].view(dtype).reshape(shape)


def load_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    return dict(iter_tensors(path))


def save_file(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: dict[str, str] | None = None):
    """Writes `tensors` in the given order; the header is padded with spaces to 8 bytes, as the reference does."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    arrays, offset = [], 0
    for name, value in tensors.items():
        a = np.asarray(value)
        nbytes = a.dtype.itemsize * a.size
        header[name] = {"dtype": dtype_name(a.dtype), "shape": list(a.shape), "data_offsets": [offset, offset + nbytes]}
        arrays.append(a)
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays:
            a = np.ascontiguousarray(a)
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            f.write(a.reshape(-1).view(np.uint8).data)
