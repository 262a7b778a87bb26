"""Pickle-free container for indexes and scorers.

Layout (little-endian):
    magic      8 bytes   b"LLSHIDX\\0"
    version    uint32    FORMAT_VERSION of the writer
    hdr_len    uint64    length of the JSON header
    hdr_crc    uint32    CRC-32 of the JSON header
    header     JSON      {"kind", "meta", "arrays": [{name, dtype, shape, offset, nbytes, crc32}],
                          "payload_bytes", "payload_crc32"}
    payload    raw array bytes, each array 64-byte aligned, offsets relative to the payload start

Files are written to a temporary file in the same folder, fsynced, then renamed over the
target, so a crash mid-save leaves the old file intact.  Reading checks every length and
checksum before building any array, so a damaged file raises IndexFormatError and loads nothing.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from typing import Dict, Tuple

import numpy as np

from .errors import IndexFormatError

MAGIC = b"LLSHIDX\0"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQI")
_ALIGN = 64
_DTYPES = {"float16", "float32", "float64", "int64", "uint64", "uint16", "uint8", "int32"}
_MAX_HEADER = 64 << 20


def _crc(buf) -> int:
    return zlib.crc32(buf) & 0xFFFFFFFF


def write_container(path: str, kind: str, meta: dict, arrays: Dict[str, np.ndarray]) -> int:
    """Atomically writes `arrays` + JSON `meta` to `path`; returns the file size in bytes."""
    entries, blobs, offset = [], [], 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in _DTYPES:
            raise TypeError(f"array {name!r}: dtype {arr.dtype} cannot be saved")
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        pad = (-offset) % _ALIGN
        if pad:
            blobs.append(b"\0" * pad)
            offset += pad
        data = memoryview(arr).cast("B")
        entries.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape), "offset": offset,
                        "nbytes": arr.nbytes, "crc32": _crc(data)})
        blobs.append(data)
        offset += arr.nbytes
    payload_crc = 0
    for blob in blobs:
        payload_crc = zlib.crc32(blob, payload_crc)
    header = json.dumps({"kind": kind, "meta": meta, "arrays": entries, "payload_bytes": offset,
                         "payload_crc32": payload_crc & 0xFFFFFFFF}).encode("utf-8")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".llsh-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), _crc(header)))
            f.write(header)
            for blob in blobs:
                f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return os.path.getsize(path)


def read_container(path: str, kind: str) -> Tuple[dict, Dict[str, np.ndarray]]:
    """Reads a file written by write_container; returns (meta, arrays) or raises IndexFormatError."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IndexFormatError(f"{path}: cannot read ({exc})") from exc
    if len(raw) < _PREFIX.size or raw[:8] != MAGIC:
        raise IndexFormatError(f"{path}: not an llsh_index file (expected magic {MAGIC!r}, "
                               f"got {raw[:8]!r})")
    _, version, hdr_len, hdr_crc = _PREFIX.unpack_from(raw)
    if version > FORMAT_VERSION:
        raise IndexFormatError(f"{path}: format version {version} was written by a newer llsh_index; "
                               f"this one reads versions up to {FORMAT_VERSION}")
    if version < 1:
        raise IndexFormatError(f"{path}: invalid format version {version}")
    start = _PREFIX.size
    if hdr_len > _MAX_HEADER or start + hdr_len > len(raw):
        raise IndexFormatError(f"{path}: truncated file (header of {hdr_len} bytes, file of {len(raw)} bytes)")
    header_bytes = raw[start:start + hdr_len]
    if _crc(header_bytes) != hdr_crc:
        raise IndexFormatError(f"{path}: header checksum mismatch (damaged file)")
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path}: unreadable header ({exc})") from exc
    if header.get("kind") != kind:
        raise IndexFormatError(f"{path}: expected a {kind!r} file, got {header.get('kind')!r}")
    payload = memoryview(raw)[start + hdr_len:]
    if len(payload) != header.get("payload_bytes"):
        raise IndexFormatError(f"{path}: truncated or padded payload: expected {header.get('payload_bytes')} "
                               f"bytes, got {len(payload)}")
    if _crc(payload) != header.get("payload_crc32"):
        raise IndexFormatError(f"{path}: payload checksum mismatch (damaged file)")
    arrays = {}
    for e in header.get("arrays", []):
        try:
            dtype = np.dtype(e["dtype"]).newbyteorder("<")
            shape = tuple(int(s) for s in e["shape"])
            off, nbytes = int(e["offset"]), int(e["nbytes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{path}: malformed array entry {e!r}") from exc
        if e["dtype"] not in _DTYPES or any(s < 0 for s in shape) or \
                int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != nbytes or off < 0 or off + nbytes > len(payload):
            raise IndexFormatError(f"{path}: inconsistent array entry {e.get('name')!r}")
        blob = payload[off:off + nbytes]
        if _crc(blob) != e.get("crc32"):
            raise IndexFormatError(f"{path}: checksum mismatch in array {e.get('name')!r}")
        arrays[e["name"]] = np.frombuffer(blob, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return header.get("meta", {}), arrays
