"""The safetensors format, streamed: at most one chunk of one tensor in memory.

The ``safetensors`` package (extra ``compat[safetensors]``) is the authority on the
format: it validates every source header and reads back every file written here. Data
is read and written by this module with plain file I/O because the package's writer
needs every tensor in memory at once and its reader maps the whole file, which would
make the converter's peak memory the file size instead of one chunk.

Layout: 8-byte little-endian header length N, N bytes of JSON (``{name: {dtype, shape,
data_offsets: [begin, end]}, "__metadata__": {str: str}}``, offsets relative to the
end of the header), then the tensors' bytes, contiguous, in offset order.
"""

from __future__ import annotations

import ctypes
import io
import json
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from compat.checkpoint import atomic, commit, files, request
from compat.checkpoint.files import torchfile
from compat.checkpoint.progress import Progress
from compat.checkpoint.request import Request, Result, Source
from compat.checkpoint.unpickler import Classes
from compat.checkpoint.upgrade import (
    UpgradeReport,
    plan_state_dict,
)
from compat.formats.errors import CheckpointError
from compat.formats.rules import (
    CHUNK_ELEMENTS,
    RESTORE,
    NotInt8Error,
    Spec,
    restored_chunks,
    transform_chunk,
)

HEADER_LIMIT = 100 * 2**20  # the package's own limit
COPY_CHUNK = 8 * 2**20

_CODES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
for _code, _attr in (
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
):
    if hasattr(torch, _attr):
        _CODES[_code] = getattr(torch, _attr)
_NAMES = {dtype: code for code, dtype in _CODES.items()}

INSTALL_HINT = "install the optional extra: pip install 'linear-quant-compat[safetensors]'"


def require_package() -> Any:
    """The ``safetensors`` module, or a CheckpointError telling how to install it."""
    try:
        import safetensors
    except ImportError:
        raise CheckpointError(
            f"reading or writing .safetensors files needs the safetensors package; {INSTALL_HINT}"
        ) from None
    return safetensors


def is_safetensors(path: Path) -> bool:
    """Sniff the layout (an 8-byte length, then a JSON object), not the file name."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (size,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < size <= HEADER_LIMIT


@dataclass(frozen=True)
class Entry:
    name: str
    spec: Spec
    begin: int  # relative to the data section
    end: int


class SafetensorsFile:
    """A validated safetensors file; tensors are read on demand, with plain reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                self._bad(f"it has {len(raw)} bytes, fewer than the 8-byte header length")
            (length,) = struct.unpack("<Q", raw)
            if length > HEADER_LIMIT or 8 + length > self.size:
                self._bad(
                    f"header length {length} exceeds the file ({self.size} bytes) or the limit"
                )
            header_bytes = f.read(length)
        try:
            header = json.loads(header_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            self._bad(f"the header is not valid JSON ({err})")
        if not isinstance(header, dict):
            self._bad("the header is not a JSON object")
        self.data_start = 8 + length
        metadata = header.pop("__metadata__", None)
        if metadata is not None and (
            not isinstance(metadata, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            self._bad("__metadata__ is not a mapping of strings to strings")
        self.metadata: dict[str, str] | None = metadata
        entries = [self._entry(name, info) for name, info in header.items()]
        entries.sort(key=lambda e: (e.begin, e.end))
        position = 0
        for e in entries:
            if e.begin != position:
                self._bad(
                    f"tensor {e.name!r} starts at byte {e.begin} of the data, expected {position} "
                    "(gap or overlap)"
                )
            position = e.end
        if self.data_start + position != self.size:
            self._bad(
                f"the tensors end at byte {self.data_start + position} but the file has "
                f"{self.size} bytes "
                f"({'truncated' if self.data_start + position > self.size else 'trailing data'})"
            )
        self.entries: dict[str, Entry] = {e.name: e for e in entries}  # file order
        self._check_with_package()
        self._file: io.BufferedReader | None = None

    def _bad(self, why: str) -> Any:
        raise CheckpointError(f"{self.path}: not a valid safetensors file: {why}")

    def _entry(self, name: str, info: object) -> Entry:
        if not isinstance(info, dict):
            self._bad(f"entry {name!r} is not an object")
        assert isinstance(info, dict)
        code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        dtype = _CODES.get(code) if isinstance(code, str) else None
        if dtype is None:
            self._bad(f"tensor {name!r} has dtype {code!r}; supported: {', '.join(_CODES)}")
        ok_shape = isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
        ok_offsets = (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and o >= 0 for o in offsets)
        )
        if not ok_shape or not ok_offsets:
            self._bad(f"tensor {name!r} has shape {shape!r} and data_offsets {offsets!r}")
        assert dtype is not None and isinstance(shape, list) and isinstance(offsets, list)
        spec = Spec(dtype, tuple(shape))
        if offsets[1] - offsets[0] != spec.nbytes:
            self._bad(
                f"tensor {name!r} ({spec}) needs {spec.nbytes} bytes but data_offsets {offsets} "
                f"give {offsets[1] - offsets[0]}"
            )
        return Entry(name, spec, offsets[0], offsets[1])

    def _check_with_package(self) -> None:
        package = require_package()
        try:
            with package.safe_open(str(self.path), framework="pt") as f:
                keys = set(f.keys())
                metadata = f.metadata()
        except Exception as err:
            self._bad(f"the safetensors package rejects it ({type(err).__name__}: {err})")
        if keys != set(self.entries) or (metadata or None) != (self.metadata or None):
            self._bad("the safetensors package reads different tensor names or metadata")

    # -- reading
    def _handle(self) -> io.BufferedReader:
        if self._file is None:
            self._file = open(self.path, "rb")
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read_bytes(
        self, entry: Entry, start: int, count: int, into: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``count`` bytes of a tensor from byte ``start`` (relative to the tensor), read
        into ``into`` (a reused uint8 buffer of at least ``count`` bytes) if given."""
        buf = torch.empty(count, dtype=torch.uint8) if into is None else into[:count]
        f = self._handle()
        f.seek(self.data_start + entry.begin + start)
        got = f.readinto(_memory(buf)) if count else 0
        if got != count:
            raise CheckpointError(
                f"{self.path}: tensor {entry.name!r} is truncated (read {got} of {count} bytes)"
            )
        return buf

    def spec(self, key: str) -> Spec:
        return self.entries[key].spec

    def tensor(self, key: str) -> torch.Tensor:
        e = self.entries[key]
        return _as(self.read_bytes(e, 0, e.spec.nbytes), e.spec)

    def chunks(self, key: str) -> Iterator[torch.Tensor]:
        """Flat chunks of ``CHUNK_ELEMENTS`` elements, read into one reused buffer: each
        chunk is valid only until the next one is requested."""
        e = self.entries[key]
        item = e.spec.dtype.itemsize
        total = e.spec.numel
        buf = torch.empty(min(CHUNK_ELEMENTS, total) * item, dtype=torch.uint8)
        for start in range(0, total, CHUNK_ELEMENTS):
            count = min(CHUNK_ELEMENTS, total - start)
            raw = self.read_bytes(e, start * item, count * item, buf)
            yield _as(raw, Spec(e.spec.dtype, (count,)))

    def is_meta(self, key: str) -> bool:
        return False

    def raw_chunks(self, key: str) -> Iterator[torch.Tensor]:
        """The tensor's bytes in ``COPY_CHUNK`` pieces, through one reused buffer."""
        e = self.entries[key]
        total = e.end - e.begin
        buf = torch.empty(min(COPY_CHUNK, total), dtype=torch.uint8)
        for start in range(0, total, COPY_CHUNK):
            yield self.read_bytes(e, start, min(COPY_CHUNK, total - start), buf)


def _as(buf: torch.Tensor, spec: Spec) -> torch.Tensor:
    if sys.byteorder != "little":  # pragma: no cover - no big-endian CI machine
        raise CheckpointError("safetensors files are little-endian; this machine is not")
    return buf.view(spec.dtype).reshape(spec.shape)


def _memory(data: torch.Tensor) -> memoryview:
    """A zero-copy view of a contiguous CPU uint8 tensor's bytes (no numpy needed)."""
    if data.numel() == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_ubyte * data.numel()).from_address(data.data_ptr())).cast("B")


def as_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a CPU tensor (made contiguous first), without a copy when contiguous."""
    return _memory(tensor.contiguous().reshape(-1).view(torch.uint8))  # 0-d: one element


def header_bytes(entries: list[tuple[str, Spec]], metadata: dict[str, str] | None) -> bytes:
    """The 8-byte length and JSON header for tensors written in ``entries`` order."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    position = 0
    for name, spec in entries:
        code = _NAMES.get(spec.dtype)
        if code is None:
            raise CheckpointError(
                f"tensor {name!r} has dtype {spec.dtype}, which safetensors cannot store"
            )
        header[name] = {
            "dtype": code,
            "shape": list(spec.shape),
            "data_offsets": [position, position + spec.nbytes],
        }
        position += spec.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write(
    out: IO[bytes],
    entries: list[tuple[str, Spec]],
    metadata: dict[str, str] | None,
    produce: Callable[[str], Iterator[torch.Tensor]],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write a safetensors file; ``produce(name)`` yields the tensor's bytes in order."""
    out.write(header_bytes(entries, metadata))
    for name, spec in entries:
        written = 0
        for piece in produce(name):
            data = as_bytes(piece)
            out.write(data)
            written += len(data)
            if progress is not None:
                progress(len(data))
        if written != spec.nbytes:
            raise CheckpointError(
                f"internal error: tensor {name!r} produced {written} bytes, expected {spec.nbytes}"
            )


# --------------------------------------------------------------------------- conversion
@dataclass
class Job:
    """One safetensors file to write: its tensors in order and what happens to each."""

    files: dict[str, SafetensorsFile]  # tensor name -> the file holding it
    names: list[str]
    metadata: dict[str, str] | None
    report: UpgradeReport
    crcs: dict[str, int] = field(default_factory=dict)  # CRC-32 of the bytes written

    def change(self, name: str) -> Any:
        return next((k for k in self.report.changes if k.key == name), None)

    def spec(self, name: str) -> Spec:
        change = self.change(name)
        return change.after if change is not None else self.files[name].spec(name)


class FilesAccess:
    """:class:`Access` over tensors held by safetensors files (name -> file)."""

    def __init__(self, files: dict[str, SafetensorsFile]) -> None:
        self.files = files

    def spec(self, key: str) -> Spec:
        return self.files[key].spec(key)

    def tensor(self, key: str) -> torch.Tensor:
        return self.files[key].tensor(key)

    def chunks(self, key: str) -> Iterator[torch.Tensor]:
        return self.files[key].chunks(key)

    def is_meta(self, key: str) -> bool:
        return False


class _Deferred(FilesAccess):
    """Float weights are checked while they are written (one read of the file instead of
    two); on a bad value the conversion re-plans with every value read and raises."""

    defer_weight_checks = True


def write_job(out: IO[bytes], job: Job, progress: Progress | None) -> None:
    """Stream the tensors out; transformed ones are checked chunk by chunk against their
    documented transformation (RESTORE: int8 -> float gives the source back; DECODE:
    the bits), so what is written is what the report says."""

    def produce(name: str) -> Iterator[torch.Tensor]:
        change, source = job.change(name), job.files[name]
        if change is None:
            pieces: Iterator[torch.Tensor] = source.raw_chunks(name)
        elif change.action == RESTORE:
            pieces = restored_chunks(source.chunks(name))
        else:
            pieces = (transform_chunk(change.action, c) for c in source.chunks(name))
        crc = 0
        for piece in pieces:
            crc = zlib.crc32(as_bytes(piece), crc)
            yield piece
        job.crcs[name] = crc

    entries = [(name, job.spec(name)) for name in job.names]
    advance = progress.advance if progress is not None else None
    write(out, entries, job.metadata, produce, advance)


def verify_job(path: Path, job: Job, progress: Progress | None) -> None:
    """Reload: the safetensors package must read the same names, dtypes, shapes and
    metadata, and every tensor's bytes must have the CRC-32 of the bytes written.

    Every transformed tensor must also be the documented transformation of its source
    tensor, checked as for torch files (:func:`torchfile.documented_transformation_holds`),
    independently of the code that produced it: a decoded scale is re-read from the
    written file and from the source, chunk by chunk. A weight restored to int8 was
    checked against its source chunk by chunk while it was written (every value survived
    the int8 -> float round trip), and the CRC ties the file's bytes to those chunks; as
    for torch files, the float source is not read a third time.
    """
    try:
        written = SafetensorsFile(path)
    except CheckpointError as err:
        raise CheckpointError(f"verification failed: {err}") from None
    try:
        if list(written.entries) != job.names or written.metadata != job.metadata:
            raise CheckpointError(
                f"verification failed: {path} holds other tensors or metadata than expected"
            )
        for name in job.names:
            want = job.spec(name)
            if written.spec(name) != want:
                raise CheckpointError(
                    f"verification failed: {name!r} was written as {written.spec(name)}, "
                    f"expected {want}"
                )
            crc = 0
            for piece in written.raw_chunks(name):
                crc = zlib.crc32(as_bytes(piece), crc)
            if progress is not None:
                progress.advance(want.nbytes)
            if crc != job.crcs[name]:
                raise CheckpointError(
                    f"verification failed: {name!r} differs from what was written"
                )
            change = job.change(name)
            if change is not None and change.changed and change.action != RESTORE:
                _check_transformation(change.action, name, job.files[name], written)
    finally:
        written.close()


def _check_transformation(
    action: str, name: str, source: SafetensorsFile, written: SafetensorsFile
) -> None:
    """The written tensor ``name`` is the documented ``action`` form of the source's,
    compared one chunk at a time (both files yield chunks of the same element count)."""
    pairs = zip(source.chunks(name), written.chunks(name), strict=False)
    same_size = source.spec(name).numel == written.spec(name).numel
    if not same_size or not all(
        torchfile.documented_transformation_holds(action, src, got) for src, got in pairs
    ):
        raise CheckpointError(
            f"verification failed: {name!r} is not the documented {action} form of the source "
            "tensor"
        )


def _write_st_job(
    req: Request,
    source: Source,
    dst: Path,
    result: Result,
    progress: Progress,
    job: Job,
    replan: Callable[[], object],
) -> Result:
    """Write, verify and commit one safetensors file. A float weight found not to hold
    int8 values while writing aborts it; ``replan()`` (every value read) then raises the
    full list of problems, as a dry run reports them."""
    try:
        return commit.write_verified(
            req,
            source,
            dst,
            result,
            progress,
            lambda out: write_job(out, job, progress),
            lambda path: verify_job(path, job, progress),
        )
    except NotInt8Error as err:
        replan()
        raise CheckpointError(
            f"{source.path}: a float weight holds {err}, not an int8 value"
        ) from None


def convert(req: Request, source: Source, dst: Path | None) -> Result:
    sf = SafetensorsFile(source.path)
    try:
        names = list(sf.entries)
        files = dict.fromkeys(names, sf)
        access = sf if req.dry_run else _Deferred(files)  # a dry run reads every value
        report = plan_state_dict(names, access, req.output_dtypes)
        result = Result(source.path, dst, "safetensors", "", [("", report)])
        if req.dry_run:
            result.status = "would-convert" if report.changed else "up-to-date"
            return result
        assert dst is not None
        progress = request.progress_for(req, 2 * source.path.stat().st_size)
        try:
            if req.in_place and report.changed:
                commit.check_backup_free(source.path)
            atomic.remove_stale_temps(dst)
            if not report.changed:
                result.status = "current"
                if not req.in_place:
                    with commit.writing(dst) as tmp:
                        commit.copy_verified(source.path, tmp, progress)
                        commit.commit(tmp, backup_of=None, result=result)
                    progress.finish()
                    result.verified = True
                return result
            job = Job(files, names, sf.metadata, report)
            progress.retotal(2 * sum(job.spec(name).nbytes for name in names))
            full = FilesAccess(files)
            replan = lambda: plan_state_dict(names, full, req.output_dtypes)  # noqa: E731
            return _write_st_job(req, source, dst, result, progress, job, replan)
        finally:
            progress.close()
    finally:
        sf.close()


class SafetensorsFormat(files.FileFormat):
    """One ``.safetensors`` file (recognised by its header, not its name)."""

    name = "safetensors"
    run = staticmethod(convert)

    def detect(self, path: Path) -> Path | None:
        return path if path.is_file() and is_safetensors(path) else None

    def open(
        self, path: Path, *, trust_pickle: bool, classes: Classes | None = None
    ) -> files.Opened:
        sf = SafetensorsFile(path)
        return files.Opened(list(sf.entries), sf, sf.close)


FORMAT: SafetensorsFormat = SafetensorsFormat()
