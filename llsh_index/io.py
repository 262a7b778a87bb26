"""Pickle-free container for indexes and scorers.

Layout (little-endian):
    magic      8 bytes   b"LLSHIDX\\0"
    version    uint32    FORMAT_VERSION of the writer
    hdr_len    uint64    length of the JSON header
    hdr_crc    uint32    CRC-32 of the JSON header
    header     JSON      {"kind", "meta", "arrays": [{name, dtype, shape, offset, nbytes, crc32}],
                          "payload_bytes", "payload_crc32"}
    payload    raw array bytes, each array 64-byte aligned, offsets relative to the payload start

The writer pads the JSON header with spaces (JSON's own whitespace: every reader parses it as before)
so that the payload, and so every array, also starts 64-byte aligned in the file: read_container(...,
mmap=True) can then hand out each array as a view of one read-only memory map, without a copy.
Files written before that padding load mapped too, their arrays that are not aligned for their
dtype copied (saving the file again aligns them).

Files are written to a temporary file in the same folder (created with the process umask, like
any new file), fsynced, then renamed over the target and the folder fsynced, so a crash mid-save
leaves the old file intact (and at worst a stray ".llsh-*.tmp" file next to it).  Reading checks
the magic, version, every length and checksum and the structure of the header before building any
array, so a damaged, truncated or foreign file raises IndexFormatError and loads nothing; nothing in
the file is ever executed (no pickle).  Only the bytes the header announces are read, so pointing
load() at a large foreign file costs one 24-byte read.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import mmap as _mmap
import os
import secrets
import stat
import struct
import zlib
from typing import BinaryIO, Dict, Iterator, Optional, Tuple

import numpy as np

from ._validation import PATH_TYPES
from .errors import IndexFileNotFoundError, IndexFormatError, InvalidInputError, LLSHError, WritePathError

MAGIC = b"LLSHIDX\0"
# 2: index files may store ids / offsets / keys narrowed and leave out the bucket statistics
# when they hold the codes (llsh_index.index.save); version 1 files still load
FORMAT_VERSION = 2
_PREFIX = struct.Struct("<8sIQI")
_ALIGN = 64
_DTYPES = {"float16", "float32", "float64", "int64", "uint64", "uint32", "uint16", "uint8", "int32"}
_MAX_HEADER = 64 << 20
_MAX_NDIM = 32


def _crc(buf) -> int:
    return zlib.crc32(buf) & 0xFFFFFFFF


def check_write_path(path) -> str:
    """The file a save to `path` will write (symlinks followed), or WritePathError when `path` can
    never be one: empty, a folder, a device, a FIFO.  Commands call it before their work."""
    if not isinstance(path, PATH_TYPES):
        raise WritePathError(f"expected a file path (str or os.PathLike), got {type(path).__name__} {path!r}")
    given = os.fsdecode(path)
    if not given:
        raise WritePathError("expected a file path, got ''")
    if "\0" in given:  # os calls raise an untyped ValueError on it
        raise WritePathError(f"{given!r}: expected a file path, got one that contains a NUL byte")
    # A symlink is followed: the file it names is replaced and the link keeps pointing at it (a
    # rename over the link itself would cut it off).  Anything else that is not a plain file (a
    # folder, /dev/null, a FIFO) is refused: the rename would replace it with a file.
    resolved = os.path.realpath(given)
    if os.path.lexists(resolved) and not os.path.isfile(resolved):
        if _is_link_loop(resolved):  # realpath stops at a loop without a word: the link itself is left
            raise WritePathError(f"{given}: expected a file path, but it is a symbolic link loop (the links never "
                                 "reach a file)")
        what = "a folder" if os.path.isdir(resolved) else "not a regular file (a device, FIFO or socket)"
        raise WritePathError(f"{given}: expected a file path, but it is {what}")
    check_folder_path(os.path.dirname(resolved), given)
    return resolved


def _is_link_loop(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def check_folder_path(folder, given=None) -> None:
    """WritePathError when `folder` can never be made: a part of it that exists is a file (the
    write would fail only after the work, in os.makedirs)."""
    part = os.fsdecode(folder)
    if "\0" in part:  # os.makedirs would raise an untyped ValueError
        raise WritePathError(f"{os.fsdecode(given if given is not None else folder)!r}: expected a folder path, "
                             f"got one that contains a NUL byte")
    while part and not os.path.exists(part):
        parent = os.path.dirname(part)
        if parent == part:
            break
        part = parent
    if part and os.path.exists(part) and not os.path.isdir(part):
        raise WritePathError(f"{os.fsdecode(given if given is not None else folder)}: cannot create its folder "
                             f"{os.fsdecode(folder)}: a part of that path is a file ({part})")


@contextlib.contextmanager
def atomic_write(path) -> Iterator[BinaryIO]:
    """Opens a temporary file beside `path` for binary writing; on success fsyncs it, renames it
    over `path` and fsyncs the folder, so a crash at any point leaves the old file or the new one,
    never a mix.  On an exception the temporary file is removed and `path` is untouched.

    Every writer of the package goes through here (indexes, scorers, feature and score files).
    """
    resolved = check_write_path(path)
    given = os.fsdecode(path)  # the caller's spelling, for the messages
    folder = os.path.dirname(resolved)
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise WritePathError(f"{given}: cannot create its folder {folder}: a part of that path is a file") from exc
    except OSError as exc:
        raise WritePathError(f"{given}: cannot create its folder {folder}: {exc.strerror or exc}") from exc
    # O_EXCL with a random name instead of tempfile.mkstemp: mkstemp creates the file 0600, which
    # the rename would then give to the saved file; os.open applies the umask like any new file.
    while True:
        tmp = os.path.join(folder, f".llsh-{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
        except OSError as exc:  # read-only or full file system, no permission: name the target, not tmp
            raise _with_errno(WritePathError(f"{given}: cannot write in {folder}: {exc.strerror or exc}"), exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, resolved)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, LLSHError):
            # a full disk or quota, an I/O error mid-write: the target named (the old file is intact)
            raise _with_errno(WritePathError(f"{given}: cannot write: {exc.strerror or exc} (a file already there is "
                                             f"unchanged)"), exc) from exc
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def file_sha256(path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _with_errno(error: OSError, cause: OSError) -> OSError:
    """error with the cause's errno (ENOSPC, EACCES...), so `except OSError as e: e.errno` works on it
    (errno only: with strerror set too, str(error) would become "[Errno 28] ..." without the path)."""
    error.errno = cause.errno
    return error


def write_container(path: str, kind: str, meta: dict, arrays: Dict[str, np.ndarray], digest=None) -> int:
    """Atomically writes `arrays` + JSON `meta` to `path`; returns the file size in bytes.  digest: a
    hashlib object fed the bytes as they are written (a shard list's SHA-256 of what this call wrote,
    not of what the file holds by the time it is read again)."""
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
    # spaces after the JSON (which it allows) up to a 64-byte boundary: the payload starts aligned in
    # the file, so the arrays of a memory-mapped load (read_container(mmap=True)) are aligned views
    header += b" " * ((-(_PREFIX.size + len(header))) % _ALIGN)
    with atomic_write(path) as f:
        for chunk in (_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), _crc(header)), header, *blobs):
            f.write(chunk)
            if digest is not None:
                digest.update(chunk)
    return os.path.getsize(path)


def not_regular_file(path) -> Optional[str]:
    """What `path` is when it exists but is neither a regular file nor a folder ("a FIFO", "a device",
    "a socket"), else None.  Readers refuse these before open(): reading a FIFO blocks until a writer
    comes, which may be never."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError, TypeError):
        return None  # missing (the reader's own not-found error) or not a path
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


def refuse_non_regular(path, error, expected: str) -> None:
    """Raises error("PATH: expected EXPECTED, got a FIFO") (a device, a socket) for a path that exists but
    is neither a regular file nor a folder: every reader calls it before open() or np.load.  A path
    with a NUL byte, which no file has and on which open() raises an untyped ValueError, is refused too."""
    if isinstance(path, PATH_TYPES) and "\0" in os.fsdecode(path):
        raise error(f"{os.fsdecode(path)!r}: expected {expected}, got a path that contains a NUL byte")
    if isinstance(path, PATH_TYPES) and _is_link_loop(os.fsdecode(path)):  # else "not found": it is there
        raise error(f"{os.fsdecode(path)}: expected {expected}, got a symbolic link loop (the links never reach a file)")
    special = not_regular_file(path)
    if special:
        raise error(f"{os.fsdecode(path)}: expected {expected}, got {special}")


def is_container(path) -> bool:
    """Whether `path` starts with this format's magic (for telling another reader which file it got)."""
    if not_regular_file(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def npz_refusal(path, exc: BaseException) -> str:
    """Why np.load(path, allow_pickle=False) refused a file, in words for a reader's error: an
    llsh_index index file, not an .npz archive at all, or one holding object arrays (numpy's own
    message then suggests loading it with pickle, which no reader here ever does), or numpy's error."""
    if is_container(path):
        return "an llsh_index index file"
    if "pickle" in str(exc):
        import zipfile

        return ("an .npz archive holding pickled (object) arrays, which are never loaded" if zipfile.is_zipfile(path)
                else "not an .npz archive")
    return f"{type(exc).__name__}: {exc}"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_exact(f, n: int, path: str, what: str) -> bytes:
    buf = f.read(n)
    if len(buf) != n:
        raise IndexFormatError(f"{path}: truncated file ({what}: expected {n} bytes, got {len(buf)})")
    return buf


def read_container(path: str, kind: str, mmap: bool = False) -> Tuple[dict, Dict[str, np.ndarray]]:
    """Reads a file written by write_container; returns (meta, arrays) or raises IndexFormatError.

    A missing file raises IndexFileNotFoundError (a FileNotFoundError) naming it; anything else that
    is not a complete, undamaged container of this `kind` (a folder, an empty, truncated or
    byte-flipped file, a future format version, a pickle or .npz) raises IndexFormatError.

    mmap=True: the arrays are read-only views of one read-only memory map of the file (shared with
    every process mapping it, through the page cache) instead of private copies.  The same checks
    run first, the checksums over the mapping, so a damaged or truncated file raises as above before
    any array is handed out.  The file must not be changed in place while mapped (truncating it makes
    a later access fault with SIGBUS); replacing it by rename, as every writer here does, is safe: the
    mapping keeps the old file.  Arrays that are not aligned for their dtype in the file (files
    written before the header was padded) or not in the host's byte order are copied (writeable).
    """
    if not isinstance(path, PATH_TYPES) or not os.fspath(path):
        # open() would take an int as a file descriptor: read the caller's fd, then close it
        raise InvalidInputError(f"path: expected a file path (str or os.PathLike), got {type(path).__name__} "
                                f"{path!r}")
    refuse_non_regular(path, IndexFormatError, "an llsh_index file")
    mapped = None
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(_PREFIX.size)
            if len(prefix) == 0:
                raise IndexFormatError(f"{path}: empty file, not an llsh_index file")
            if prefix[:len(MAGIC)] != MAGIC:
                if MAGIC.startswith(prefix):
                    raise IndexFormatError(f"{path}: truncated file ({len(prefix)} bytes)")
                raise IndexFormatError(f"{path}: not an llsh_index file (expected magic {MAGIC!r}, "
                                       f"got {prefix[:8]!r})")
            if len(prefix) < _PREFIX.size:
                raise IndexFormatError(f"{path}: truncated file ({len(prefix)} bytes, the fixed header alone "
                                       f"is {_PREFIX.size})")
            _, version, hdr_len, hdr_crc = _PREFIX.unpack(prefix)
            if version > FORMAT_VERSION:
                raise IndexFormatError(f"{path}: format version {version} was written by a newer llsh_index; "
                                       f"this one reads versions up to {FORMAT_VERSION}")
            if version < 1:
                raise IndexFormatError(f"{path}: invalid format version {version}")
            if hdr_len > _MAX_HEADER or _PREFIX.size + hdr_len > size:
                raise IndexFormatError(f"{path}: truncated file (header of {hdr_len} bytes, file of {size} bytes)")
            header_bytes = _read_exact(f, hdr_len, path, "header")
            if _crc(header_bytes) != hdr_crc:
                raise IndexFormatError(f"{path}: header checksum mismatch (damaged file)")
            header = _parse_header(header_bytes, path, kind)
            payload_bytes = header["payload_bytes"]
            have = size - _PREFIX.size - hdr_len
            if have != payload_bytes:
                raise IndexFormatError(f"{path}: truncated or padded payload: expected {payload_bytes} bytes, "
                                       f"got {have}")
            if mmap:
                # the whole file, read-only; its length is taken from the mapping itself (the file may
                # have changed since fstat): no view below reaches past its end, so no access faults
                mapped = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
                start = _PREFIX.size + hdr_len
                if len(mapped) != start + payload_bytes:
                    raise IndexFormatError(f"{path}: truncated or padded payload: expected {payload_bytes} bytes, "
                                           f"got {len(mapped) - start} (file changed while reading?)")
                if mapped[:start] != prefix + header_bytes:
                    raise IndexFormatError(f"{path}: the header changed while reading (file changed while reading?)")
                payload = memoryview(mapped)[start:]
            else:
                raw = _read_exact(f, payload_bytes, path, "payload")
                if f.read(1):
                    raise IndexFormatError(f"{path}: trailing bytes after the payload (file changed while reading?)")
                payload = memoryview(raw)
    except FileNotFoundError:
        raise IndexFileNotFoundError(f"index file not found: {os.fsdecode(path)}", os.fsdecode(path)) from None
    except BaseException as exc:
        _unmap(mapped)
        if isinstance(exc, IndexFormatError) or not isinstance(exc, (OSError, MemoryError, OverflowError, ValueError)):
            raise
        # ValueError: mmap refuses what cannot be mapped (an empty or special file changed meanwhile)
        raise IndexFormatError(f"{path}: cannot read ({exc})") from exc
    try:
        arrays = _arrays_of(payload, header, path, view=mapped is not None)
    except BaseException:
        payload.release()
        _unmap(mapped)
        raise
    return header["meta"], arrays


def _arrays_of(payload: memoryview, header: dict, path, view: bool) -> Dict[str, np.ndarray]:
    """The header's arrays out of the payload, every checksum checked first.  view (a memory map's
    payload): each one is a read-only view of it when it is aligned for its dtype and in the host's
    byte order, else a copy; otherwise always a (writeable) copy."""
    if _crc(payload) != header["payload_crc32"]:
        raise IndexFormatError(f"{path}: payload checksum mismatch (damaged file)")
    arrays = {}
    for e in header["arrays"]:
        dtype = np.dtype(e["dtype"]).newbyteorder("<")
        off, nbytes = e["offset"], e["nbytes"]
        blob = payload[off:off + nbytes]
        if _crc(blob) != e["crc32"]:
            raise IndexFormatError(f"{path}: checksum mismatch in array {e['name']!r}")
        a = np.frombuffer(blob, dtype=dtype).reshape(e["shape"])
        if not (view and a.flags.aligned and a.dtype.isnative):
            a = a.astype(dtype.newbyteorder("="))
        arrays[e["name"]] = a
    return arrays


def _unmap(mapped) -> None:
    """Closes a map no array was handed out of (views still exported: left to the garbage collector)."""
    if mapped is not None:
        try:
            mapped.close()
        except BufferError:
            pass


def _parse_header(header_bytes: bytes, path: str, kind: str) -> dict:
    """Decodes the JSON header and checks its structure; every field read later is validated here."""
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise IndexFormatError(f"{path}: unreadable header ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise IndexFormatError(f"{path}: malformed header (expected a JSON object, got {type(header).__name__})")
    if header.get("kind") != kind:
        raise IndexFormatError(f"{path}: expected a {kind!r} file, got {header.get('kind')!r}")
    payload_bytes, payload_crc = header.get("payload_bytes"), header.get("payload_crc32")
    if not (_is_int(payload_bytes) and payload_bytes >= 0 and _is_int(payload_crc)):
        raise IndexFormatError(f"{path}: malformed header (payload size or checksum)")
    if not isinstance(header.get("meta", {}), dict):
        raise IndexFormatError(f"{path}: malformed header (meta is not a JSON object)")
    header.setdefault("meta", {})
    entries = header.get("arrays", [])
    if not isinstance(entries, list):
        raise IndexFormatError(f"{path}: malformed header (arrays is not a list)")
    seen = set()
    for e in entries:
        if not isinstance(e, dict):
            raise IndexFormatError(f"{path}: malformed array entry {e!r}")
        name, dt, shape, off, nbytes = e.get("name"), e.get("dtype"), e.get("shape"), e.get("offset"), e.get("nbytes")
        ok = (isinstance(name, str) and name not in seen and isinstance(dt, str) and dt in _DTYPES
              and isinstance(shape, list)
              and len(shape) <= _MAX_NDIM and all(_is_int(s) and s >= 0 for s in shape)
              and _is_int(off) and _is_int(nbytes) and _is_int(e.get("crc32")) and off >= 0 and nbytes >= 0)
        # sizes in Python integers: no int64 wrap-around can make a huge shape look small
        if not ok or math.prod(shape) * np.dtype(dt).itemsize != nbytes or off + nbytes > payload_bytes:
            raise IndexFormatError(f"{path}: inconsistent array entry {name!r}")
        seen.add(name)
    return header
