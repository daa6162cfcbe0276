"""The torch file format (``torch.save`` output): safe loading, integrity check, saving,
verification with bounded memory, and conversion."""

from __future__ import annotations

import collections
import contextlib
import inspect
import io
import pickle
import struct
import sys
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import torch
from torch import nn

from compat.checkpoint import atomic, commit, files, request, unpickler
from compat.checkpoint.pages import PageReleaser
from compat.checkpoint.progress import Progress
from compat.checkpoint.request import Request, Result, Source
from compat.checkpoint.unpickler import Classes
from compat.checkpoint.upgrade import OutputDtypes, UpgradeReport, apply_report, plan_state_dict
from compat.formats.errors import CheckpointError
from compat.formats.loading import module_context
from compat.formats.rules import CHUNK_ELEMENTS, DECODE, RESTORE, Context, DictAccess
from compat.nn.linear_quant import LinearQuant

#: where a state_dict sits in the loaded object: () or (key,), the dict's own key (an int
#: key stays an int)
Location = tuple[Any, ...]


@dataclass
class Loaded:
    """A torch file as loaded (whole-module pickles already turned into state_dicts)."""

    path: Path
    obj: Any
    zip: bool
    pickled_modules: bool = False
    contexts: dict[Location, dict[str, Context]] = field(default_factory=dict)
    releaser: PageReleaser | None = None
    #: unpickled with --trust-pickle (and these classes): what is written from it may hold
    #: the same objects, so it is reloaded the same way to be verified
    trusted: bool = False
    classes: Classes | None = None


def safe_load(f: Path | IO[bytes], **kwargs: Any) -> Any:
    """``torch.load(f, weights_only=True)`` on the CPU, also accepting
    :data:`unpickler.SAFE_CLASSES` (where this torch can be told: 2.5 and newer)."""
    allow = getattr(torch.serialization, "safe_globals", None)
    with allow(list(unpickler.SAFE_CLASSES)) if allow else contextlib.nullcontext():
        return _quiet_load(f, weights_only=True, **kwargs)


def trusted_load(f: Path | IO[bytes], classes: Classes | None, *, label: str, **kwargs: Any) -> Any:
    """``torch.load(f)`` on the CPU unpickling everything (only with explicit trust), with
    torch_npu's classes redirected to compat's and ``classes`` to theirs; a failure is a
    :class:`CheckpointError` starting with ``label`` (what was being read)."""
    pickle_module = unpickler.redirecting_pickle_module(classes)
    try:
        return _quiet_load(f, weights_only=False, pickle_module=pickle_module, **kwargs)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{label}: unpickling failed even with --trust-pickle: {err}"
        ) from None
    except Exception as err:
        raise CheckpointError(
            f"{label}: unpickling failed even with --trust-pickle ({type(err).__name__}: "
            f"{_last_line(err)})"
        ) from None


def _quiet_load(f: Path | IO[bytes], **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        # weights-only unpickler notice for protocol-4 pickles: the load fails or works anyway
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(str(f) if isinstance(f, Path) else f, map_location="cpu", **kwargs)


def load(path: Path, *, trust_pickle: bool, classes: Classes | None = None) -> Loaded:
    """Load with ``weights_only=True`` (``mmap=True`` for zip files), on the CPU.

    A file needing pickled classes is refused with a message pointing at
    ``--trust-pickle``; with trust it is unpickled with torch_npu's classes redirected
    to compat's (and the classes of ``classes`` to theirs), and every module in it is
    replaced by its state_dict.
    """
    is_zip = zipfile.is_zipfile(path)
    try:
        obj = safe_load(path, mmap=is_zip)
    except pickle.UnpicklingError as err:
        refusal = unpickler.weights_only_refusal(err, path)
        if refusal is None:
            raise CheckpointError(
                f"{path}: not a torch checkpoint, or corrupt ({_last_line(err)})"
            ) from None
        if not trust_pickle:
            raise CheckpointError(refusal) from None
        obj = trusted_load(path, classes, label=str(path), mmap=is_zip)
        loaded = _modules_to_state(path, obj, is_zip)
        loaded.releaser = PageReleaser(path, enabled=is_zip and _native_order(path))
        loaded.trusted, loaded.classes = True, classes
        return loaded
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"{path}: cannot read it as a torch checkpoint; it is truncated or corrupt "
            f"({type(err).__name__}: {_last_line(err)})"
        ) from None
    return Loaded(
        path, obj, is_zip, releaser=PageReleaser(path, enabled=is_zip and _native_order(path))
    )


def _last_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if "Unsupported" in line or "error" in line.lower()]
    return (useful or lines)[-1].strip()[:300]


def _native_order(path: Path) -> bool:
    """Whether the file's tensors are stored in this machine's byte order."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/byteorder") or n == "byteorder"]
            if not names:
                return sys.byteorder == "little"  # files without the record are little-endian
            return zf.read(names[0]).decode() == sys.byteorder
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError):
        return False


def _modules_to_state(path: Path, obj: Any, is_zip: bool) -> Loaded:
    """Replace unpickled modules (top level or one level down) by their state_dicts."""
    contexts: dict[Location, dict[str, Context]] = {}

    def convert(module: nn.Module, where: Location) -> dict[str, Any]:
        contexts[where] = {
            name: module_context(m)
            for name, m in module.named_modules()
            if isinstance(m, LinearQuant)
        }
        state: dict[str, Any] = module.state_dict()
        return state

    if isinstance(obj, nn.Module):
        return Loaded(path, convert(obj, ()), is_zip, True, contexts)
    if isinstance(obj, dict) and any(isinstance(v, nn.Module) for v in obj.values()):
        out = type(obj)()
        for key, value in obj.items():
            out[key] = convert(value, (key,)) if isinstance(value, nn.Module) else value
        return Loaded(path, out, is_zip, True, contexts)
    return Loaded(path, obj, is_zip, False, contexts)


# --------------------------------------------------------------------------- integrity
def check_zip_crc(path: Path, progress: Progress | None = None) -> None:
    """Read every record of a zip-format torch file and check its CRC-32.

    ``torch.load`` does not check them, so flipped bytes inside a tensor load silently.
    Plain reads through a small buffer: this costs no resident memory.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as record:
                    while chunk := record.read(16 * 2**20):
                        if progress is not None:
                            progress.advance(len(chunk))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt torch file ({err}); it was not converted") from None


# --------------------------------------------------------------------------- one stored tensor
@dataclass(frozen=True)
class StoredTensor:
    """A ``torch.save``'d tensor whose bytes lie contiguous, uncompressed and in this
    machine's byte order in its zip: ``start`` counts from the beginning of the file
    object that was read."""

    start: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = self.dtype.itemsize
        for d in self.shape:
            count *= d
        return count


class _StorageType(NamedTuple):
    dtype: torch.dtype


class _StorageRef(NamedTuple):
    dtype: torch.dtype
    key: str
    numel: int


class _Rebuilt(NamedTuple):
    storage: object
    offset: object
    size: object
    stride: object


class _NotPlain(Exception):
    """The pickle holds more than one plain tensor."""


def _rebuilt(storage: object, offset: object, size: object, stride: object, *_: object) -> Any:
    return _Rebuilt(storage, offset, size, stride)


class _TensorRecordUnpickler(unpickler.RestrictedUnpickler):
    """Reads the ``data.pkl`` of ``torch.save(tensor)`` without building anything: only
    the plain-tensor rebuild function, ``OrderedDict`` (its empty hooks) and torch's
    storage classes may be named (and none of them changed); anything else is
    :class:`_NotPlain`."""

    def allowed_global(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuilt
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name.endswith("Storage") and name != "UntypedStorage":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "TypedStorage is deprecated"
                dtype = getattr(getattr(torch, name, None), "dtype", None)
            if isinstance(dtype, torch.dtype):
                return _StorageType(dtype)
        raise _NotPlain(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage":
            if isinstance(pid[1], _StorageType) and isinstance(pid[4], int):
                return _StorageRef(pid[1].dtype, str(pid[2]), pid[4])
        raise _NotPlain("storage")


def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for size, step in zip(reversed(shape), reversed(stride), strict=True):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True


def stored_tensor(f: IO[bytes] | io.RawIOBase) -> StoredTensor | None:
    """Where the one tensor of a zip-format ``torch.save(tensor)`` lies in ``f`` (a
    seekable binary file), so that it can be read in pieces straight from the file;
    None when it is not such a file or its tensor is not plain (non-contiguous, a view
    into a larger storage, compressed, another byte order, a subclass...): then
    ``torch.load`` reads it. Nothing is unpickled but the record of the tensor."""
    try:
        with zipfile.ZipFile(f) as zf:
            infos = {info.filename: info for info in zf.infolist()}
            pickles = [name for name in infos if name.endswith("/data.pkl")]
            if len(pickles) != 1:
                return None
            prefix = pickles[0].removesuffix("data.pkl")
            order = infos.get(prefix + "byteorder")
            found = zf.read(order).decode() if order is not None else "little"
            if found != sys.byteorder:
                return None
            rebuilt = _TensorRecordUnpickler(io.BytesIO(zf.read(pickles[0]))).load()
    except (_NotPlain, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError):
        return None
    except (TypeError, AttributeError, IndexError, KeyError, UnicodeDecodeError):
        return None  # a pickle of another shape: torch.load decides what it is
    if not isinstance(rebuilt, _Rebuilt) or not isinstance(rebuilt.storage, _StorageRef):
        return None
    storage = rebuilt.storage
    if not isinstance(rebuilt.size, tuple) or not isinstance(rebuilt.stride, tuple):
        return None
    shape, stride = tuple(int(d) for d in rebuilt.size), tuple(int(d) for d in rebuilt.stride)
    numel = 1
    for d in shape:
        numel *= d
    record = infos.get(f"{prefix}data/{storage.key}")
    if (
        rebuilt.offset != 0
        or len(shape) != len(stride)
        or not _is_contiguous(shape, stride)
        or storage.numel != numel
        or record is None
        or record.compress_type != zipfile.ZIP_STORED
        or record.file_size != numel * storage.dtype.itemsize
    ):
        return None
    f.seek(record.header_offset)
    header = f.read(30)  # the local file header: its name and extra field precede the data
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        return None
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return StoredTensor(
        record.header_offset + 30 + name_length + extra_length, storage.dtype, shape
    )


# --------------------------------------------------------------------------- containers
def is_state_dict(value: object) -> bool:
    if not isinstance(value, Mapping) or not value:
        return False
    keys_ok = all(isinstance(k, str) for k in value)
    values = list(value.values())
    return (
        keys_ok
        and any(isinstance(v, torch.Tensor) for v in values)
        and not any(isinstance(v, Mapping) for v in values)
    )


def state_dicts(obj: Any) -> list[tuple[Location, Mapping[str, Any]]]:
    """The state_dicts in a loaded object: itself, or its values one level down."""
    if is_state_dict(obj):
        return [((), obj)]
    if isinstance(obj, Mapping):
        return [((k,), v) for k, v in obj.items() if is_state_dict(v)]
    return []


def where(location: Location) -> str:
    return "" if not location else f"[{location[0]!r}] "


def plan(
    loaded: Loaded, output_dtypes: object, *, keep_results: bool = True
) -> list[tuple[Location, UpgradeReport]]:
    found = state_dicts(loaded.obj)
    if not found:
        deeper = [
            f"[{k!r}][{j!r}]"
            for k, v in (loaded.obj.items() if isinstance(loaded.obj, Mapping) else ())
            if isinstance(v, Mapping)
            for j, inner in v.items()
            if is_state_dict(inner)
        ]
        hint = (
            f"; it holds state_dicts two levels down ({', '.join(deeper[:3])}), which are not "
            "read: pass each to compat.upgrade_state_dict, or save them one level down"
            if deeper
            else ""
        )
        raise CheckpointError(
            f"{loaded.path}: no state_dict found (the file holds a {type(loaded.obj).__name__}; "
            f"expected a mapping of names to tensors, or a dict holding such mappings one "
            f"level down{hint})"
        )
    plans = []
    for location, sd in found:
        keys = [k for k, v in sd.items() if isinstance(v, torch.Tensor)]
        release = loaded.releaser.release if loaded.releaser is not None else None
        try:
            access = DictAccess(sd, release, keep_results=keep_results)
            report = plan_state_dict(
                keys, access, output_dtypes, modules=loaded.contexts.get(location)
            )
        except CheckpointError as err:
            if not location:
                raise
            raise CheckpointError([f"{where(location)}{p}" for p in err.problems]) from None
        plans.append((location, report))
    return plans


def apply(
    obj: Any, plans: list[tuple[Location, UpgradeReport]], releaser: PageReleaser | None = None
) -> Any:
    """The upgraded object (the input is not modified; unchanged tensors are shared)."""
    release = releaser.release if releaser is not None else None
    for location, report in plans:
        if not location:
            return apply_report(obj, report, release)
    out = type(obj)(obj) if isinstance(obj, dict) else dict(obj)
    for location, report in plans:
        out[location[0]] = apply_report(obj[location[0]], report, release)
    return out


def storage_bytes(obj: Any) -> int:
    """Bytes of the distinct tensor storages in ``obj`` (what torch.save writes)."""
    seen: dict[int, int] = {}

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(obj)
    return sum(seen.values())


# --------------------------------------------------------------------------- saving
class _ReleasingWriter:
    """Forwards to torch's zip writer; after each tensor record, releases the source
    pages just read and advances the progress bar."""

    def __init__(
        self, inner: Any, releaser: PageReleaser | None, progress: Progress | None
    ) -> None:
        self._inner = inner
        self._releaser = releaser
        self._progress = progress

    def write_record(self, name: str, data: Any, nbytes: int) -> None:
        self._inner.write_record(name, data, nbytes)
        if isinstance(data, torch.UntypedStorage):
            if self._releaser is not None:
                self._releaser.release(data)
            if self._progress is not None:
                self._progress.advance(nbytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _private_save() -> Any:
    """torch's ``_save(obj, zip_file, pickle_module, protocol, disable_byteorder)`` if it
    has the signature this module was written against, else None (plain torch.save)."""
    func = getattr(torch.serialization, "_save", None)
    opener = getattr(torch.serialization, "_open_zipfile_writer", None)
    if func is None or opener is None:
        return None
    try:
        params = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None
    return (
        func
        if params
        == ["obj", "zip_file", "pickle_module", "pickle_protocol", "_disable_byteorder_record"]
        else None
    )


class _RecordingFile:
    """The output file as torch's zip writer sees it: keeps the OSError of a failed write,
    which torch's C++ writer turns into an opaque RuntimeError ("unexpected pos")."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.out.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.out.flush()


def save(
    obj: Any, out: IO[bytes], *, releaser: PageReleaser | None, progress: Progress | None
) -> None:
    """``torch.save(obj, out)`` (zip format), releasing source pages as it goes."""
    target = _RecordingFile(out)
    try:
        func = _private_save()
        if func is None:
            torch.save(obj, target)  # type: ignore[arg-type]  # has write() and flush()
            return
        with torch.serialization._open_zipfile_writer(target) as zip_file:  # type: ignore[arg-type]
            writer = _ReleasingWriter(zip_file, releaser, progress)
            func(obj, writer, pickle, torch.serialization.DEFAULT_PROTOCOL, False)
    except Exception as err:
        if target.error is not None:
            raise target.error from err
        raise


# --------------------------------------------------------------------------- verification
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bits as integers (so NaN payloads and -0.0 compare exactly), as wide
    as the layout allows: comparing int64 words is ~10x faster than bytes."""
    if t.is_complex():
        t = torch.view_as_real(t)
    t = t.detach()
    if t.is_contiguous() and t.numel() > 0:
        flat = t.reshape(-1).view(torch.uint8)
        for wide in (torch.int64, torch.int32):
            size = wide.itemsize
            if flat.numel() % size == 0 and (flat.storage_offset() % size == 0):
                try:
                    return flat.view(wide)
                except RuntimeError:
                    continue
        return flat
    return t.view(_INT_VIEW[t.element_size()])


def _flat_chunks(t: torch.Tensor) -> Iterator[torch.Tensor]:
    flat = t.reshape(-1)
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        yield flat[start : start + CHUNK_ELEMENTS]


def documented_transformation_holds(
    action: str, source: torch.Tensor, result: torch.Tensor, scratch: torch.Tensor | None = None
) -> bool:
    """Check ``result`` against the documented transformation of ``source``, independently
    of the code that produced it (docs/checkpoints.md). ``scratch``: a reused buffer of
    the source's dtype, at least one chunk long."""
    if source.shape != result.shape:
        return False
    if action == RESTORE:  # int8 values equal to the float values, element by element
        if result.dtype != torch.int8:
            return False
        for s, r in zip(_flat_chunks(source), _flat_chunks(result), strict=True):
            back = r.to(s.dtype) if scratch is None else scratch[: r.numel()].copy_(r)
            if not torch.equal(back, s):
                return False
        return True
    if action == DECODE:  # float32 whose bits are bits 0-31 of the param with bits 0-12 cleared
        if source.dtype != torch.int64 or result.dtype != torch.float32:
            return False
        expected = source & 0xFFFFE000  # int64 values in [0, 2**32)
        return bool(torch.equal(expected, result.view(torch.int32).to(torch.int64) & 0xFFFFFFFF))
    return False


class _Verifier:
    def __init__(
        self,
        src_releaser: PageReleaser | None,
        dst_releaser: PageReleaser,
        progress: Progress | None,
    ) -> None:
        self.src_releaser = src_releaser
        self.dst_releaser = dst_releaser
        self.progress = progress

    def release(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            if self.src_releaser is not None:
                self.src_releaser.release(t)
            self.dst_releaser.release(t)

    def tensor(self, name: str, want: torch.Tensor, got: torch.Tensor) -> None:
        if want.dtype != got.dtype or want.shape != got.shape:
            raise CheckpointError(
                f"verification failed: {name!r} was written as {got.dtype} {tuple(got.shape)}, "
                f"expected {want.dtype} {tuple(want.shape)}"
            )
        same = bool(torch.equal(_bits(want), _bits(got)))
        self.release(want, got)
        if self.progress is not None:
            self.progress.advance(got.numel() * got.element_size())
        if not same:
            raise CheckpointError(
                f"verification failed: {name!r} differs from the source after writing"
            )

    def value(self, name: str, want: Any, got: Any) -> None:
        if isinstance(want, torch.Tensor):
            if not isinstance(got, torch.Tensor):
                raise CheckpointError(
                    f"verification failed: {name!r} is a {type(got).__name__}, expected a tensor"
                )
            self.tensor(name, want, got)
        elif isinstance(want, Mapping):
            if not isinstance(got, Mapping) or list(want.keys()) != list(got.keys()):
                raise CheckpointError(
                    f"verification failed: the keys of {name or 'the file'!r} differ after writing"
                )
            if getattr(want, "_metadata", None) != getattr(got, "_metadata", None):
                raise CheckpointError(
                    f"verification failed: the _metadata of {name or 'the file'!r} differs after "
                    "writing"
                )
            for key in want:
                self.value(f"{name}/{key}" if name else str(key), want[key], got[key])
        elif isinstance(want, (list, tuple)):
            if type(want) is not type(got) or len(want) != len(got):
                raise CheckpointError(f"verification failed: {name!r} differs after writing")
            for i, (a, b) in enumerate(zip(want, got, strict=True)):
                self.value(f"{name}[{i}]", a, b)
        else:
            same_nan = (
                isinstance(want, float) and isinstance(got, float) and want != want and got != got
            )
            if not (want == got or same_nan or _same_state(want, got)):
                raise CheckpointError(f"verification failed: {name!r} differs after writing")


def _same_state(want: Any, got: Any) -> bool:
    """Objects whose class compares by identity only (``io.BytesIO``, a trusted pickle's
    plain classes) are the same when they pickle to the same bytes."""
    compares_identity = getattr(type(want), "__eq__", None) is getattr(object, "__eq__", None)
    if type(want) is not type(got) or not compares_identity:
        return False
    try:
        return pickle.dumps(want) == pickle.dumps(got)
    except Exception:
        return False


def verify(
    written: Path,
    expected: Any,
    source: Any,
    plans: list[tuple[Location, UpgradeReport]],
    *,
    src_releaser: PageReleaser | None,
    progress: Progress | None,
    trusted: bool = False,
    classes: Classes | None = None,
) -> None:
    """Reload ``written`` (unpickling everything, with ``classes``, if ``trusted``: the
    source needed it) and check it tensor by tensor.

    Every tensor must be bit-identical to ``expected`` (the upgraded object, whose
    unchanged tensors are the source's own); every transformed tensor must also equal
    the documented transformation of its source tensor. For a weight restored to int8
    that was established while planning, on the very tensor now compared bit for bit
    (every value survived the int8 -> float round trip), so the float source is not
    read a third time.
    """
    try:
        if trusted:
            got = trusted_load(written, classes, label=f"{written}", mmap=True)
        else:
            got = safe_load(written, mmap=True)
    except Exception as err:
        raise CheckpointError(
            f"verification failed: the written file does not load ({type(err).__name__}: "
            f"{_last_line(err)})"
        ) from None
    checker = _Verifier(src_releaser, PageReleaser(written), progress)
    checker.value("", expected, got)
    for location, report in plans:
        src_sd = source[location[0]] if location else source
        got_sd = got[location[0]] if location else got
        for change in report.changes:
            if change.result is not None:
                continue  # checked against the source while planning (see above)
            src_t, got_t = src_sd[change.key], got_sd[change.key]
            ok = documented_transformation_holds(change.action, src_t, got_t)
            checker.release(src_t, got_t)
            if not ok:
                raise CheckpointError(
                    f"verification failed: {where(location)}{change.key!r} is not the documented "
                    f"{change.action} form of the source tensor"
                )
    del got


def _label(location: Location) -> str:
    return f"[{location[0]!r}]" if location else ""


class _Background:
    """Run ``func(*args)`` in a thread; :meth:`wait` re-raises its exception."""

    def __init__(self, func: Callable[..., None] | None, *args: Any) -> None:
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if func is not None:

            def target() -> None:
                try:
                    func(*args)
                except BaseException as err:  # handed to the waiting thread
                    self._error = err

            self._thread = threading.Thread(target=target, name="compat-crc", daemon=True)
            self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error


def convert(req: Request, source: Source, dst: Path | None) -> Result:
    size = source.path.stat().st_size
    progress = request.progress_for(req, 3 * size)
    try:
        loaded = load(source.path, trust_pickle=req.trust_pickle, classes=req.classes)
        # the CRC pass reads the file with plain I/O; it overlaps planning and writing and
        # must succeed before anything is committed (or reported as convertible)
        crc = _Background(check_zip_crc, source.path) if loaded.zip else _Background(None)
        progress.phase("planning")
        try:
            plans = plan(loaded, req.output_dtypes, keep_results=not req.dry_run)
        except CheckpointError:
            crc.wait()  # a corrupt file explains a planning failure better
            raise
        changed = any(r.changed for _, r in plans)
        result = Result(source.path, dst, "torch", "", [(_label(loc), r) for loc, r in plans])
        if loaded.pickled_modules:
            result.notes.append("whole-module pickle (trusted): written as a state_dict")
        must_write = changed or loaded.pickled_modules
        if req.dry_run:
            crc.wait()
            result.status = "would-convert" if must_write else "up-to-date"
            return result
        assert dst is not None
        if req.in_place and must_write:
            commit.check_backup_free(source.path)
        atomic.remove_stale_temps(dst)
        if not must_write:
            result.status = "current"
            if not req.in_place:
                with commit.writing(dst) as tmp:
                    progress.phase("copying")
                    commit.copy_verified(source.path, tmp, progress)
                    crc.wait()
                    commit.commit(tmp, backup_of=None, result=result)
                progress.finish()
                result.verified = True
            return result
        upgraded = apply(loaded.obj, plans, loaded.releaser)
        progress.retotal(progress.done + 2 * storage_bytes(upgraded))
        release = loaded.releaser

        def write_file(out: IO[bytes]) -> None:
            save(upgraded, out, releaser=release, progress=progress)

        def verify_file(path: Path) -> None:
            verify(
                path,
                upgraded,
                loaded.obj,
                plans,
                src_releaser=release,
                progress=progress,
                trusted=loaded.trusted,
                classes=loaded.classes,
            )
            crc.wait()

        return commit.write_verified(req, source, dst, result, progress, write_file, verify_file)
    finally:
        progress.close()


class TorchFormat(files.FileFormat):
    """``torch.save`` files (zip or legacy serialization); the catch-all format."""

    name = "torch"
    run = staticmethod(convert)

    def detect(self, path: Path) -> Path | None:
        return path if path.is_file() else None

    def open(
        self, path: Path, *, trust_pickle: bool, classes: Classes | None = None
    ) -> files.Opened:
        loaded = load(path, trust_pickle=trust_pickle, classes=classes)
        if loaded.zip:
            check_zip_crc(path)
        flat = loaded.obj if is_state_dict(loaded.obj) else {}
        keys = [k for k, v in flat.items() if isinstance(v, torch.Tensor)]
        release = loaded.releaser.release if loaded.releaser is not None else None

        def upgrade(output_dtypes: OutputDtypes) -> Any:
            return apply(loaded.obj, plan(loaded, output_dtypes))

        return files.Opened(keys, DictAccess(flat, release), upgrade=upgrade)


FORMAT: TorchFormat = TorchFormat()
