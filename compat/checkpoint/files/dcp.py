"""``torch.distributed.checkpoint`` (DCP) directories: ``.metadata`` plus ``__R_N.distcp``
files written by one or many ranks.

Read in a single process, no process group: the metadata first (names, dtypes, shapes,
read with a restricted unpickler, see below), the upgrade is planned from it alone, then
tensors are read one at a time. An item that is one plain tensor (what ``dcp.save``
writes for a contiguous tensor: an uncompressed ``torch.save`` zip) is read in chunks
straight from its bytes (:func:`torchfile.stored_tensor`), any other with ``torch.load``.
A DCP destination is written item by item in ``dcp.save``'s layout: an unchanged item's
bytes are copied, a transformed tensor is built chunk by chunk, and verification compares
source and output chunk by chunk, so peak memory stays below the largest tensor.

``.metadata`` is a pickle; it is read with an unpickler that allows only DCP's metadata
classes, and every tensor item is loaded with ``weights_only=True``. Non-tensor entries
are copied as stored into a DCP destination, never unpickled; where they must be loaded
(``--to torch``, ``load_legacy``) it is weights-only (plus ``unpickler.SAFE_CLASSES``)
unless the caller trusts pickles: without that trust nothing from the directory can run
code. (The DCP directory written here uses ``_StorageInfo``, DCP's record of where
an item lies, the one private name of torch used.) Destinations: a DCP directory
(default), or with ``--to`` one torch file, one safetensors file or a sharded safetensors
directory. Every destination is staged beside DST, verified tensor by tensor against the
source, then renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import pickle
import shutil
import sys
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from compat.checkpoint import atomic, commit, files, request, unpickler, workers
from compat.checkpoint.files import safetensors_file, torchfile
from compat.checkpoint.progress import Progress
from compat.checkpoint.request import Part, Request, Result, Source, UsageError
from compat.checkpoint.unpickler import Classes
from compat.checkpoint.upgrade import (
    UpgradeReport,
    plan_state_dict,
)
from compat.formats.errors import CheckpointError
from compat.formats.rules import (
    CHUNK_ELEMENTS,
    KEEP,
    RESTORE,
    KeyChange,
    NotInt8Error,
    Spec,
    restored_chunks,
    transform_chunk,
)

if TYPE_CHECKING:  # imported where used: torch.distributed.checkpoint takes ~1 s to import
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        Metadata,
        TensorStorageMetadata,
    )

METADATA = ".metadata"
#: ``--to`` choices for a DCP source
TARGETS = ("dcp", "torch", "safetensors", "sharded")
#: largest shard written by ``--to sharded``
SHARD_BYTES = 2 * 2**30

_SINGLE_PROCESS = "torch.distributed is disabled, unavailable or uninitialized"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns that it runs without a process group; that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE_PROCESS)
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated")
        yield


_DCP_CLASSES = frozenset(
    {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_StorageInfo",
        "_MEM_FORMAT_ENCODING",
    }
)
_OTHER_GLOBALS = frozenset(
    {
        ("torch", "Size"),
        ("torch._utils", "_get_layout"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }
)


class _MetadataUnpickler(unpickler.RestrictedUnpickler):
    """``.metadata`` is a pickle: only DCP's metadata classes, torch dtypes and sizes and
    paths may be named in it, and none of them changed (see the base class), so a crafted
    file cannot run code or alter this process (DCP's own reader unpickles anything)."""

    def allowed_global(self, module: str, name: str) -> Any:
        # nothing is imported for a name that is not allowed: only modules already loaded,
        # and torch's own attributes without its lazy submodule imports
        dcp_class = (
            module.startswith("torch.distributed.checkpoint.")
            and module in sys.modules
            and name in _DCP_CLASSES
        )
        dtype = module == "torch" and isinstance(vars(torch).get(name), torch.dtype)
        if dcp_class or dtype or (module, name) in _OTHER_GLOBALS:
            return self.lookup(module, name)
        raise CheckpointError(
            f"refusing to unpickle the DCP metadata: it names {module}.{name}, which is not "
            "part of torch.distributed.checkpoint's metadata (a crafted file could run code)"
        )


def read_metadata(path: Path) -> Metadata:
    """The DCP metadata, with every file it names checked to exist and be long enough."""
    from torch.distributed.checkpoint.metadata import Metadata

    meta_file = path / METADATA
    if not meta_file.is_file():
        found = ", ".join(sorted(p.name for p in path.glob("*.distcp"))[:3]) or "no .distcp"
        raise CheckpointError(
            f"{meta_file}: missing; a torch.distributed.checkpoint directory needs its "
            f".metadata file (found {found}); was the save interrupted?"
        )
    try:
        with open(meta_file, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if not isinstance(metadata, Metadata):
            raise TypeError(f"it holds a {type(metadata).__name__}, not DCP Metadata")
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"{meta_file}: not a readable DCP metadata file ({type(err).__name__}: {err})"
        ) from None
    ends: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        name = str(info.relative_path)
        ends[name] = max(ends.get(name, 0), int(info.offset) + int(info.length))
    for name, end in sorted(ends.items()):
        data = path / name
        if Path(name).name != name:
            raise CheckpointError(f"{meta_file}: names {name!r}, which is not a plain file name")
        if not data.is_file():
            raise CheckpointError(f"{data}: missing, but {meta_file} says it holds tensor data")
        size = data.stat().st_size
        if size < end:
            raise CheckpointError(
                f"{data}: truncated ({size} bytes; {meta_file} needs at least {end})"
            )
    return metadata


class _Reader:
    """Tensors of a DCP directory, loaded one at a time (an :class:`Access`)."""

    def __init__(
        self, path: Path, *, trust_pickle: bool = False, classes: Classes | None = None
    ) -> None:
        from torch.distributed.checkpoint.filesystem import FileSystemReader
        from torch.distributed.checkpoint.metadata import (
            BytesStorageMetadata,
            TensorStorageMetadata,
        )

        self.path = path
        #: non-tensor entries needing classes beyond weights-only are unpickled only then
        self.trust_pickle, self.classes = trust_pickle, classes
        self.metadata = read_metadata(path)
        entries = self.metadata.state_dict_metadata
        self.tensor_keys = [k for k, v in entries.items() if isinstance(v, TensorStorageMetadata)]
        self.object_keys = [k for k, v in entries.items() if isinstance(v, BytesStorageMetadata)]
        self._reader = FileSystemReader(str(path))
        # DCP's loader (for transformed items) would read .metadata again with a plain
        # pickle.load, and fall back to an unchecked __0.metadata: it gets the checked one
        checked = self.metadata
        self._reader.read_metadata = lambda *_args, **_kwargs: checked  # type: ignore[method-assign]
        self._cache: dict[str, torch.Tensor] = {}  # the last tensor read (its chunks)
        #: whether planning leaves float weights' int8 check to the writer (:func:`convert`)
        self.defer_weight_checks = False
        #: ``--only-shards``: the items this part converts (others' weights are not read)
        self.only: frozenset[str] | None = None
        # where each plain item's bytes lie (or None: torch.load reads it), by file, offset
        self._stored: dict[tuple[str, int], torchfile.StoredTensor | None] = {}

    def spec(self, key: str) -> Spec:
        entry = self._tensor_entry(key)
        return Spec(entry.properties.dtype, tuple(entry.size))

    def _tensor_entry(self, key: str) -> TensorStorageMetadata:
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        entry = self.metadata.state_dict_metadata[key]
        assert isinstance(entry, TensorStorageMetadata)
        return entry

    def tensor(self, key: str) -> torch.Tensor:
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.state_dict_loader import load as load_state_dict

        self._cache = {}  # release the previous tensor before reading the next
        try:
            out = self._read_direct(key)
            if out is None:  # transformed items (compressed...): DCP's own reader
                spec = self.spec(key)
                out = torch.empty(spec.shape, dtype=spec.dtype)
                with _quiet():
                    load_state_dict({key: out}, storage_reader=self._reader)
        except CheckpointError:
            raise
        except (Exception, CheckpointException) as err:  # DCP's is a BaseException
            raise CheckpointError(
                f"{self.path}: reading tensor {key!r} failed ({type(err).__name__}: "
                f"{str(err).strip().splitlines()[-1][:300] if str(err).strip() else err})"
            ) from None
        self._cache = {key: out}  # keep one: the planner reads small tensors repeatedly
        return out

    def _read_direct(self, key: str) -> torch.Tensor | None:
        """Read a tensor's chunks straight from their file ranges: a plain item's bytes
        into the result itself, any other item loaded once with ``weights_only=True``
        (DCP's reader copies every item's bytes first, which triples the peak memory of
        a large tensor). None if an item is transformed."""
        entry = self._tensor_entry(key)
        pieces = self._pieces(key)
        if pieces is None:
            return None
        spec = Spec(entry.properties.dtype, tuple(entry.size))
        if len(pieces) == 1 and tuple(pieces[0][0].sizes) == spec.shape:
            if self._stored_item(pieces[0][1], spec) is None:
                whole: torch.Tensor = self._load_item(key, pieces[0][1])
                return whole
        out = torch.empty(spec.shape, dtype=spec.dtype)
        for chunk, info in pieces:
            view = out
            for dim, (start, length) in enumerate(zip(chunk.offsets, chunk.sizes, strict=True)):
                view = view.narrow(dim, start, length)
            stored = self._stored_item(info, Spec(view.dtype, tuple(view.shape)))
            if stored is not None and view.is_contiguous():
                path = self.path / str(info.relative_path)
                with open(path, "rb") as f:
                    _read_into(f, path, key, stored.start, safetensors_file.as_bytes(view))
            else:
                view.copy_(self._load_item(key, info))
        return out

    def item_span(self, key: str) -> tuple[str, int, int] | None:
        """(file name, offset, length) of the one untransformed item that holds the whole
        tensor, or None."""
        pieces = self._pieces(key)
        if pieces is None or len(pieces) != 1:
            return None
        chunk, info = pieces[0]
        if tuple(chunk.sizes) != self.spec(key).shape or any(chunk.offsets):
            return None
        return str(info.relative_path), int(info.offset), int(info.length)

    def _pieces(self, key: str) -> list[tuple[Any, Any]] | None:
        """(chunk, storage info) of every piece of a tensor; None if one is transformed."""
        from torch.distributed.checkpoint.metadata import MetadataIndex

        storage = self.metadata.storage_data or {}
        pieces = []
        for chunk in self._tensor_entry(key).chunks:
            info = storage.get(MetadataIndex(key, chunk.offsets))
            if info is None:
                raise CheckpointError(
                    f"{self.path / METADATA}: no file holds chunk {list(chunk.offsets)} of {key!r}"
                )
            if getattr(info, "transform_descriptors", None):
                return None
            pieces.append((chunk, info))
        return pieces

    def _stored_item(self, info: Any, spec: Spec) -> torchfile.StoredTensor | None:
        """Where a plain item of ``spec``'s dtype and shape lies in its file (offsets from
        the file's start), or None."""
        where = (str(info.relative_path), int(info.offset))
        if where not in self._stored:
            with open(self.path / where[0], "rb") as f:
                found = torchfile.stored_tensor(_Window(f, where[1], int(info.length)))
            fits = found is not None and found.start + found.nbytes <= int(info.length)
            self._stored[where] = (
                torchfile.StoredTensor(where[1] + found.start, found.dtype, found.shape)
                if found is not None and fits
                else None
            )
        stored = self._stored[where]
        if stored is None or stored.dtype != spec.dtype or stored.shape != spec.shape:
            return None
        return stored

    def _load_item(self, key: str, info: Any) -> torch.Tensor:
        path = self.path / str(info.relative_path)
        with open(path, "rb") as f:
            window = _Window(f, int(info.offset), int(info.length))
            try:
                value = torchfile.safe_load(window)  # type: ignore[arg-type]
            except Exception as err:
                raise CheckpointError(
                    f"{path}: tensor {key!r} (bytes {info.offset}-{info.offset + info.length}) "
                    f"cannot be read; the file is corrupt ({type(err).__name__}: {err})"
                ) from None
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: the item of {key!r} is not a tensor")
        return value

    def chunks(self, key: str) -> Iterator[torch.Tensor]:
        """Flat chunks of ``CHUNK_ELEMENTS`` elements. A tensor stored as one plain item
        is read piece by piece into one reused buffer (each chunk valid only until the
        next is requested), so a large weight is never whole in memory; any other is
        read whole, then sliced."""
        spec = self.spec(key)
        stored = None
        pieces = None if key in self._cache else self._pieces(key)
        if pieces is not None and len(pieces) == 1:
            stored = self._stored_item(pieces[0][1], spec)
        if stored is None or pieces is None:
            flat = self.tensor(key).reshape(-1)
            for start in range(0, flat.numel(), CHUNK_ELEMENTS):
                yield flat[start : start + CHUNK_ELEMENTS]
            return
        path, item = self.path / str(pieces[0][1].relative_path), spec.dtype.itemsize
        buf = torch.empty(min(CHUNK_ELEMENTS, spec.numel) * item, dtype=torch.uint8)
        with open(path, "rb") as f:
            for start in range(0, spec.numel, CHUNK_ELEMENTS):
                raw = buf[: min(CHUNK_ELEMENTS, spec.numel - start) * item]
                into = safetensors_file.as_bytes(raw)
                _read_into(f, path, key, stored.start + start * item, into)
                yield raw.view(spec.dtype)

    def is_meta(self, key: str) -> bool:
        return False

    def defers_weight_check(self, key: str) -> bool:
        """Float weights are checked while written (a conversion), or by the part that
        converts them (``--only-shards``)."""
        return self.defer_weight_checks or (self.only is not None and key not in self.only)

    def objects(self, keys: list[str] | None = None) -> dict[str, Any]:
        """The non-tensor entries (step counters, configs, bytes buffers), or those of
        ``keys``: loaded with weights only (and :data:`unpickler.SAFE_CLASSES`); an entry
        needing other classes is refused unless the reader trusts pickles."""
        out: dict[str, Any] = {}
        problems: list[str] = []
        for key in self.object_keys if keys is None else keys:
            try:
                out[key] = self._load_object(key)
            except CheckpointError as err:  # every entry's problem, not only the first
                problems.extend(err.problems)
        if problems:
            raise CheckpointError(problems)
        return out

    def object_span(self, key: str) -> tuple[Path, int, int, Any]:
        """(file, offset, length, transform descriptors or None) of a non-tensor entry's
        item, as stored."""
        from torch.distributed.checkpoint.metadata import MetadataIndex

        info = (self.metadata.storage_data or {}).get(MetadataIndex(key))
        if info is None:
            raise CheckpointError(f"{self.path / METADATA}: no file holds entry {key!r}")
        transforms = getattr(info, "transform_descriptors", None) or None
        return self.path / str(info.relative_path), int(info.offset), int(info.length), transforms

    def _load_object(self, key: str) -> Any:
        path, start, length, transforms = self.object_span(key)
        if transforms is not None:
            raise CheckpointError(
                f"{path}: entry {key!r} is stored transformed ({', '.join(map(str, transforms))}), "
                "which compat does not decode; a conversion to DCP (the default --to) copies "
                "it as stored"
            )
        with open(path, "rb") as f:
            window = _Window(f, start, length)
            try:
                return torchfile.safe_load(window)  # type: ignore[arg-type]
            except pickle.UnpicklingError as err:
                refusal = unpickler.weights_only_refusal(err, path, entry=key, whole_file=False)
                if refusal is None:
                    raise self._unreadable(path, key, start, length, err) from None
                if not self.trust_pickle:
                    raise CheckpointError(
                        refusal + " A conversion to DCP (the default --to) copies the entry "
                        "byte for byte without unpickling it."
                    ) from None
            except Exception as err:
                raise self._unreadable(path, key, start, length, err) from None
            window.seek(0)
            label = f"{path}: entry {key!r}"
            return torchfile.trusted_load(window, self.classes, label=label)  # type: ignore[arg-type]

    @staticmethod
    def _unreadable(path: Path, key: str, start: int, length: int, err: Exception) -> Exception:
        return CheckpointError(
            f"{path}: entry {key!r} (bytes {start}-{start + length}) cannot be read; the file "
            f"is corrupt ({type(err).__name__}: {str(err).strip()[:300]})"
        )


def _read_into(f: io.BufferedReader, path: Path, key: str, start: int, into: memoryview) -> None:
    """Fill ``into`` with the bytes of ``f`` (the file at ``path``) from ``start``."""
    f.seek(start)
    got = f.readinto(into) if len(into) else 0
    if got != len(into):
        raise CheckpointError(
            f"{path}: tensor {key!r} is truncated (read {got} of {len(into)} bytes)"
        )


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes of ``f`` starting at ``start``."""

    def __init__(self, f: Any, start: int, length: int) -> None:
        super().__init__()
        self._f, self._start, self._length, self._pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, min(self._length, base + offset))
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), self._length - self._pos)
        if count <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(view[:count])
        self._pos += got
        return int(got)


def _change_of(report: UpgradeReport) -> dict[str, KeyChange]:
    return {k.key: k for k in report.changes}


def _upgraded(reader: _Reader, changes: dict[str, KeyChange], key: str) -> torch.Tensor:
    """One tensor of the destination: the source's, or its transformation built chunk by
    chunk (the source is then never whole in memory)."""
    change = changes.get(key)
    if change is None or change.action == KEEP:
        return reader.tensor(key)
    out = torch.empty(change.after.numel, dtype=change.after.dtype)
    start = 0
    for piece in _upgraded_chunks(reader, changes, key):
        out[start : start + piece.numel()].copy_(piece)
        start += piece.numel()
    return out.reshape(change.after.shape)


def _upgraded_chunks(
    reader: _Reader, changes: dict[str, KeyChange], key: str
) -> Iterator[torch.Tensor]:
    """The destination tensor as flat chunks (each valid until the next is requested)."""
    change = changes.get(key)
    if change is not None and change.action == RESTORE:  # checked: planning may defer it
        yield from restored_chunks(reader.chunks(key))
        return
    for piece in reader.chunks(key):
        yield piece if change is None else transform_chunk(change.action, piece)


def _target_specs_of(reader: _Reader, changes: dict[str, KeyChange], key: str) -> Spec:
    return changes[key].after if key in changes else reader.spec(key)


def _target_specs(reader: _Reader, report: UpgradeReport) -> dict[str, Spec]:
    changes = _change_of(report)
    return {key: _target_specs_of(reader, changes, key) for key in reader.tensor_keys}


def _copy_range(path: Path, start: int, length: int, out: _Sink) -> None:
    """``length`` bytes of ``path`` from ``start`` into ``out`` (a file or a digest),
    through one small buffer."""
    buf = bytearray(min(safetensors_file.COPY_CHUNK, length))
    view = memoryview(buf)
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left:
            got = f.readinto(view[: min(len(buf), left)])
            if not got:
                raise CheckpointError(
                    f"{path}: truncated while copying bytes {start}-{start + length}"
                )
            out.write(view[:got])
            left -= got


class _Sink(Protocol):
    def write(self, data: memoryview, /) -> object: ...


class _Digest:
    """A :class:`_Sink` that hashes what it is given."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, data: memoryview, /) -> object:
        self.hash.update(data)
        return len(data)


def _object_digest(reader: _Reader, key: str) -> tuple[str, Any]:
    """SHA-256 of a non-tensor entry's stored bytes, and its transform descriptors."""
    path, start, length, transforms = reader.object_span(key)
    digest = _Digest()
    _copy_range(path, start, length, digest)
    return digest.hash.hexdigest(), transforms


# --------------------------------------------------------------------------- writers
def _write_tensor_item(reader: _Reader, changes: dict[str, KeyChange], key: str, path: Path) -> int:
    """One tensor as one item file (an unchanged single item: its bytes, copied verbatim;
    else ``torch.save`` of the upgraded tensor), fsynced; its length."""
    with open(path, "wb") as f:
        change = changes.get(key)
        unchanged = change is None or change.action == KEEP
        span = reader.item_span(key) if unchanged else None
        if span is not None:
            _copy_range(reader.path / span[0], span[1], span[2], f)
        else:
            value = _upgraded(reader, changes, key).contiguous()
            torch.save(value, f)
            del value
        length = f.tell()
        f.flush()
        os.fsync(f.fileno())
    return length


@dataclass(frozen=True)
class _Item:
    """One item of a DCP directory written here: its file (the item alone, from offset
    0), length, and the tensor's dtype and shape (None: a non-tensor entry)."""

    name: str
    length: int
    spec: Spec | None
    #: a non-tensor entry copied as stored keeps its transform descriptors
    transforms: Any = None


def _write_dcp(
    reader: _Reader,
    report: UpgradeReport,
    out_dir: Path,
    progress: Progress,
    jobs: int = 1,
    only: frozenset[str] | None = None,
) -> None:
    """A DCP directory as ``dcp.save`` writes it (one ``torch.save`` item per file, then
    the pickled ``.metadata``), one tensor in memory at a time per process: ``dcp.save``
    itself keeps every tensor it wrote alive until it finishes. With ``jobs`` > 1 the
    tensor items are written by that many worker processes; the files and their bytes
    are the same whatever ``jobs`` is. Non-tensor entries are copied as stored (never
    unpickled). ``only``: the items of one ``--only-shards`` part
    (file names as in the whole conversion; ``.metadata`` lists these items only)."""
    changes = _change_of(report)
    order = _item_order(reader.metadata)
    names = {key: f"__0_{number}.distcp" for number, key in enumerate(order)}
    mine = order if only is None else [k for k in order if k in only]
    objects = set(reader.object_keys)
    lengths: dict[str, int] = {}
    if jobs > 1:
        tensors = [k for k in mine if k not in objects]
        lengths = _in_workers(_write_items, reader, report, tensors, jobs, progress, out_dir, names)
    items: dict[str, _Item] = {}
    for key in mine:
        name = names[key]
        if key in objects:  # as stored, never unpickled: nothing of it is lost or run
            path, start, length, transforms = reader.object_span(key)
            with open(out_dir / name, "wb") as f:
                _copy_range(path, start, length, f)
                f.flush()
                os.fsync(f.fileno())
            items[key] = _Item(name, length, None, transforms)
        else:
            spec = _target_specs_of(reader, changes, key)
            if key not in lengths:
                lengths[key] = _write_tensor_item(reader, changes, key, out_dir / name)
                progress.advance(spec.nbytes)
            items[key] = _Item(name, lengths[key], spec)
    _write_metadata(out_dir, _metadata(reader.metadata, items, whole=only is None))


def _item_order(metadata: Metadata) -> list[str]:
    """The tensor and object entries of a checkpoint, in its metadata's order."""
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        TensorStorageMetadata,
    )

    kinds = (TensorStorageMetadata, BytesStorageMetadata)
    return [k for k, v in metadata.state_dict_metadata.items() if isinstance(v, kinds)]


def _metadata(source: Metadata, items: dict[str, _Item], *, whole: bool) -> Metadata:
    """The metadata of a DCP directory written here holding ``items`` (in that order):
    the source's planner data (of a part: its items' entries) and version."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        StorageMeta,
        TensorProperties,
        TensorStorageMetadata,
    )

    entries: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {}
    storage: dict[MetadataIndex, _StorageInfo] = {}
    for key, item in items.items():
        if item.spec is None:
            entries[key] = BytesStorageMetadata()
            index = MetadataIndex(key)
        else:
            size = torch.Size(item.spec.shape)
            chunk = ChunkStorageMetadata(offsets=torch.Size([0] * len(size)), sizes=size)
            properties = TensorProperties(dtype=item.spec.dtype)
            entries[key] = TensorStorageMetadata(properties, size, [chunk])
            index = MetadataIndex(key, chunk.offsets)
        extra = {} if item.transforms is None else {"transform_descriptors": item.transforms}
        storage[index] = _StorageInfo(
            relative_path=item.name, offset=0, length=item.length, **extra
        )
    planner_data = source.planner_data
    if planner_data is None:
        planner_data = {k: (k,) for k in items}
    elif not whole and isinstance(planner_data, dict):
        planner_data = {k: v for k, v in planner_data.items() if k in items}
    return Metadata(
        state_dict_metadata=entries,
        planner_data=planner_data,
        storage_data=storage,
        storage_meta=StorageMeta(checkpoint_id=None),
        version=source.version,
    )


def _write_metadata(out_dir: Path, metadata: Metadata) -> None:
    with open(out_dir / METADATA, "wb") as f:
        f.write(pickle.dumps(metadata))
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- --jobs
def _groups(reader: _Reader, keys: list[str], jobs: int) -> list[list[str]]:
    """``keys`` in ``jobs`` groups of about equal bytes (largest first to the lightest
    group), each in checkpoint order."""
    loads = [0] * jobs
    groups: list[list[str]] = [[] for _ in range(jobs)]
    for key in sorted(keys, key=lambda k: -reader.spec(k).nbytes):
        lightest = loads.index(min(loads))
        groups[lightest].append(key)
        loads[lightest] += reader.spec(key).nbytes
    rank = {key: i for i, key in enumerate(keys)}
    return [sorted(g, key=rank.__getitem__) for g in groups if g]


def _in_workers(
    task: Any,
    reader: _Reader,
    report: UpgradeReport,
    keys: list[str],
    jobs: int,
    progress: Progress,
    *args: Any,
) -> dict[str, int]:
    """Run ``task(source, report part, keys, *args)`` over :func:`_groups` of ``keys`` in
    ``jobs`` worker processes; the merged results. Every failure is reported (each naming
    its tensors); the caller's staging directory is then removed."""
    results: dict[str, int] = {}
    calls = [
        workers.Call(
            task,
            (reader.path, report.restricted(set(group)), group, *args),
            f"worker for {group[0]!r} and {len(group) - 1} more",
            sum(reader.spec(k).nbytes for k in group),
        )
        for group in _groups(reader, keys, jobs)
    ]
    workers.run(jobs, calls, progress, lambda _call, lengths: results.update(lengths))
    return results


def _write_items(
    source: Path, report: UpgradeReport, keys: list[str], out_dir: Path, names: dict[str, str]
) -> dict[str, int]:
    """Worker task: write these tensors' item files; their lengths."""
    reader, changes = _Reader(source), _change_of(report)
    lengths = {}
    for key in keys:
        try:
            lengths[key] = _write_tensor_item(reader, changes, key, out_dir / names[key])
        except NotInt8Error as err:  # its arguments do not survive pickling
            raise CheckpointError(f"{source}: float weight {key!r} holds {err}") from None
    return lengths


def _verify_items(
    source: Path, report: UpgradeReport, keys: list[str], staging: Path
) -> dict[str, int]:
    """Worker task: :func:`_verify` these tensors of the staged DCP directory."""
    _verify(_Reader(source), report, _Reader(staging), keys, Progress(1, enabled=False))
    return {}


def _write_torch(reader: _Reader, report: UpgradeReport, out_dir: Path, name: str) -> None:
    """One torch file of the state_dict as it was saved, nested (the whole upgraded
    state_dict is in memory while it is saved)."""
    changes = _change_of(report)
    state: dict[str, Any] = {key: _upgraded(reader, changes, key) for key in reader.tensor_keys}
    state.update(reader.objects())
    with open(out_dir / name, "wb") as f:
        torchfile.save(nested(state, reader.metadata), f, releaser=None, progress=None)
        f.flush()
        os.fsync(f.fileno())


def _write_safetensors(
    reader: _Reader, report: UpgradeReport, path: Path, keys: list[str], progress: Progress
) -> None:
    changes = _change_of(report)
    specs = _target_specs(reader, report)

    def produce(key: str) -> Iterator[torch.Tensor]:
        return _upgraded_chunks(reader, changes, key)

    with open(path, "wb") as f:
        safetensors_file.write(f, [(k, specs[k]) for k in keys], None, produce, progress.advance)
        f.flush()
        os.fsync(f.fileno())


def _shards(specs: dict[str, Spec]) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    size = 0
    for key, spec in specs.items():
        if groups[-1] and size + spec.nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += spec.nbytes
    return groups


def _write_sharded(
    reader: _Reader, report: UpgradeReport, out_dir: Path, progress: Progress
) -> list[str]:
    specs = _target_specs(reader, report)
    groups = _shards(specs)
    names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    weight_map = {}
    for name, keys in zip(names, groups, strict=True):
        _write_safetensors(reader, report, out_dir / name, keys, progress)
        weight_map.update(dict.fromkeys(keys, name))
    index = {"metadata": {"total_size": sum(s.nbytes for s in specs.values())}}
    index["weight_map"] = weight_map  # type: ignore[assignment]
    index_name = "model.safetensors.index.json"
    (out_dir / index_name).write_text(json.dumps(index, indent=2) + "\n")
    return [*names, index_name]


def _paths(metadata: Metadata) -> dict[str, tuple[Any, ...]]:
    """Where each flattened entry sat in the saved state_dict (DCP's planner data: e.g.
    ``"optim.param_groups.0.lr"`` -> ``("optim", "param_groups", 0, "lr")``)."""
    data = metadata.planner_data
    if not isinstance(data, dict):
        return {}
    return {
        key: tuple(path)
        for key, path in data.items()
        if isinstance(path, tuple | list)
        and path
        and all(isinstance(part, str | int) and not isinstance(part, bool) for part in path)
    }


def nested(flat: dict[str, Any], metadata: Metadata) -> dict[str, Any]:
    """``flat`` (by DCP's flattened names) in the nesting of the state_dict that was
    saved, as torch's ``dcp_to_torch_save`` rebuilds it: ``{"model": {...}, "optim":
    {"param_groups": [{...}]}}``; an integer in a path is a list index. A name with no
    recorded path stays a top-level key."""
    paths = _paths(metadata)
    root: dict[str, Any] = {}
    for key, value in flat.items():
        path = paths.get(key, (key,))
        node: Any = root
        try:
            for here, below in itertools.pairwise(path):
                node = _child(node, here, [] if isinstance(below, int) else {})
            _put(node, path[-1], value)
        except (TypeError, ValueError):
            raise CheckpointError(
                f"{METADATA}: the saved structure of {key!r} ({path}) clashes with another "
                "entry's; use --to dcp, which keeps the flattened names"
            ) from None
    return root


def _child(node: Any, key: Any, empty: Any) -> Any:
    if isinstance(node, list):
        _put(node, key, node[key] if key < len(node) and node[key] is not None else empty)
        return node[key]
    if not isinstance(node, dict) or (key in node and type(node[key]) is not type(empty)):
        raise TypeError(key)
    return node.setdefault(key, empty)


def _put(node: Any, key: Any, value: Any) -> None:
    if isinstance(node, list):
        if not isinstance(key, int) or key < 0:
            raise TypeError(key)
        node.extend([None] * (key + 1 - len(node)))
        node[key] = value
    elif isinstance(node, dict) and not isinstance(key, int):
        node[key] = value
    else:
        raise TypeError(key)


def _flattened(tree: dict[str, Any], keys: list[str], metadata: Metadata) -> dict[str, Any]:
    """The entries ``keys`` of a :func:`nested` state_dict, by their flattened names."""
    paths = _paths(metadata)
    out = {}
    for key in keys:
        node: Any = tree
        for part in paths.get(key, (key,)):
            node = node[part]
        out[key] = node
    return out


# --------------------------------------------------------------------------- verification
class _Tensors(Protocol):
    def spec(self, key: str) -> Spec: ...

    def chunks(self, key: str) -> Iterator[torch.Tensor]: ...


def _verify(
    reader: _Reader, report: UpgradeReport, written: _Tensors, keys: list[str], progress: Progress
) -> None:
    """Every tensor of the output against the source, chunk by chunk (neither is whole in
    memory): bit-identical, or the documented transformation of its source for the keys
    the report lists."""
    changes = _change_of(report)
    for key in keys:
        change = changes.get(key)
        action = KEEP if change is None else change.action
        want = reader.spec(key) if change is None else change.after
        got = written.spec(key)
        ok = got == want
        if ok:
            pairs = zip(reader.chunks(key), written.chunks(key), strict=True)
            if action == KEEP:
                ok = all(_same_bits(a, b) for a, b in pairs)
            else:
                ok = all(torchfile.documented_transformation_holds(action, a, b) for a, b in pairs)
        if not ok:
            raise CheckpointError(
                f"verification failed: {key!r} in the output differs from the source"
            )
        progress.advance(got.nbytes)


def _verify_objects(reader: _Reader, written: _Reader, keys: list[str]) -> None:
    """Every non-tensor entry of a written DCP directory: the source's bytes, as stored."""
    for key in keys:
        if _object_digest(written, key) != _object_digest(reader, key):
            raise CheckpointError(
                f"verification failed: entry {key!r} in the output differs from the source"
            )


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return bool(torch.equal(a.contiguous().view(view), b.contiguous().view(view)))


class _Loaded:
    """Tensors of a written torch file or of written safetensors files."""

    def __init__(self, state: dict[str, Any], handles: list[safetensors_file.SafetensorsFile]):
        self._state = state
        self._owner = {key: f for f in handles for key in f.entries}
        self.handles = handles

    def spec(self, key: str) -> Spec:
        if key in self._owner:
            return self._owner[key].spec(key)
        value = self._state[key]
        return Spec(value.dtype, tuple(value.shape))

    def chunks(self, key: str) -> Iterator[torch.Tensor]:
        if key in self._owner:
            return self._owner[key].chunks(key)
        flat = self._state[key].reshape(-1)
        return (flat[i : i + CHUNK_ELEMENTS] for i in range(0, flat.numel(), CHUNK_ELEMENTS))

    def close(self) -> None:
        for handle in self.handles:
            handle.close()


def _reopen(target: str, staging: Path, names: list[str], reader: _Reader) -> _Loaded:
    """The written torch or safetensors output, for verification."""
    if target == "torch":
        path = staging / names[0]
        if reader.trust_pickle:  # the entries it unpickled are in the file
            tree = torchfile.trusted_load(path, reader.classes, label=str(path), mmap=True)
        else:
            tree = torchfile.safe_load(path, mmap=True)
        return _Loaded(_flattened(tree, reader.tensor_keys, reader.metadata), [])
    handles = [
        safetensors_file.SafetensorsFile(staging / name)
        for name in names
        if name.endswith(".safetensors")
    ]
    return _Loaded({}, handles)


# --------------------------------------------------------------------------- parts
#: Written beside the ``.metadata`` of an ``--only-shards`` part (which lists the part's
#: items only): which part of which source it is (docs/checkpoints.md).
PART_FILE = "compat_part.json"


def data_files(metadata: Metadata) -> list[str]:
    """The data files the metadata names, sorted."""
    return sorted({str(info.relative_path) for info in (metadata.storage_data or {}).values()})


def item_files(metadata: Metadata) -> dict[str, str]:
    """The file whose part converts each item (tensor or object entry): the one holding
    most of its bytes; among files holding equally much (a tensor sharded evenly over
    ranks), the one picked by the CRC-32 of the item's name, so that such items spread
    evenly over the ranks' files. An item stored in no file: the first file."""
    held: dict[str, dict[str, int]] = {}
    for index, info in (metadata.storage_data or {}).items():
        per_file = held.setdefault(index.fqn, {})
        name = str(info.relative_path)
        per_file[name] = per_file.get(name, 0) + int(info.length)
    first = (data_files(metadata) or [""])[0]
    owners = {}
    for key in _item_order(metadata):
        stored = held.get(key)
        if not stored:
            owners[key] = first
            continue
        most = max(stored.values())
        tied = sorted(name for name, size in stored.items() if size == most)
        owners[key] = tied[zlib.crc32(key.encode()) % len(tied)]
    return owners


def _mine(reader: _Reader, key: str) -> bool:
    return reader.only is None or key in reader.only


def _write_part_file(out_dir: Path, reader: _Reader, part: Part, output_dtypes: object) -> None:
    record = {
        "format": "dcp",
        "source": str(reader.path.resolve()),
        "source_metadata_sha256": commit.sha256(reader.path / METADATA),
        "patterns": list(part.patterns),
        "files": list(part.selected),
        "of": part.of,
        "items": len(reader.only or ()),
        "output_dtype": request.output_dtypes_text(output_dtypes),
    }
    with open(out_dir / PART_FILE, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_part_file(part: Path) -> dict[str, Any]:
    path = part / PART_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: missing; {part} is not a part written by python -m compat upgrade "
            "--only-shards from a DCP directory"
        ) from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("source_metadata_sha256"), str):
        raise CheckpointError(f"{path}: not a compat part record (no source_metadata_sha256)")
    return record


def _items_of(part: Path, metadata: Metadata) -> dict[str, _Item]:
    """The items of a part's metadata, each alone in its file from offset 0 (the layout
    written here; anything else is refused)."""
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

    storage = metadata.storage_data or {}
    items = {}
    for key, entry in metadata.state_dict_metadata.items():
        spec = None
        index: MetadataIndex | None = MetadataIndex(key)
        if isinstance(entry, TensorStorageMetadata):
            spec = Spec(entry.properties.dtype, tuple(entry.size))
            index = MetadataIndex(key, torch.Size([0] * len(entry.size)))
            if len(entry.chunks) != 1 or tuple(entry.chunks[0].sizes) != spec.shape:
                index = None
        info = None if index is None else storage.get(index)
        size = None if info is None else (part / str(info.relative_path)).stat().st_size
        if info is None or int(info.offset) != 0 or size != int(info.length):
            raise CheckpointError(
                f"{part / METADATA}: {key!r} is not stored as python -m compat upgrade "
                "--only-shards writes it (one whole item per file); was this part written by it?"
            )
        items[key] = _Item(str(info.relative_path), int(info.length), spec)
    return items


def merge(source: Source, dst: Path, parts: list[Path]) -> list[Path]:
    """Put the parts of an ``--only-shards`` conversion of the DCP directory ``source``
    together into the new directory ``dst`` (staged beside it, then renamed: all or
    nothing): every part must come from this source, and together they must hold every
    item exactly once. The item files are hard-linked (copied across file systems)."""
    metadata = read_metadata(source.path)
    digest = commit.sha256(source.path / METADATA)
    order = _item_order(metadata)
    items: dict[str, _Item] = {}
    holders = request.Holders(source.path, "item", "files")
    for part in parts:
        record = _read_part_file(part)
        if record["source_metadata_sha256"] != digest:
            raise CheckpointError(
                f"{part}: a part of another checkpoint ({record.get('source')}), not of "
                f"{source.path} (their .metadata differ)"
            )
        holders.same_options(part, record.get("output_dtype"))
        held = _items_of(part, read_metadata(part))
        holders.add(part, list(held))
        items.update(held)
    holders.check(order)
    home = holders.home
    whole = _metadata(metadata, {k: items[k] for k in order}, whole=True)
    links = [(home[k] / items[k].name, items[k].name) for k in order]
    atomic.assemble_directory(dst, links, {METADATA: pickle.dumps(whole)})
    return [dst / items[k].name for k in order] + [dst / METADATA]


# --------------------------------------------------------------------------- conversion
def _target(req: Request) -> str:
    target = req.to or "dcp"
    if target not in TARGETS:
        raise UsageError(f"--to {target!r}: allowed for a DCP source: {', '.join(TARGETS)}")
    return target


def _output_name(target: str, dst: Path) -> list[str]:
    if target == "torch":
        return [dst.name if dst.suffix else "model.pt"]
    if target == "safetensors":
        return [dst.name if dst.suffix else "model.safetensors"]
    return []


def convert(req: Request, source: Source, dst: Path | None) -> Result:
    reader = _Reader(source.path, trust_pickle=req.trust_pickle, classes=req.classes)
    target = _target(req)
    part = None
    if req.only_shards:
        chosen, skipped = request.select(
            req.only_shards, tuple(data_files(reader.metadata)), source.path, ".distcp file"
        )
        owner = item_files(reader.metadata)
        reader.only = frozenset(k for k, name in owner.items() if name in chosen)
    # a conversion checks float weights for int8 values while writing them (one read of
    # each, in the workers with --jobs); a dry run, or a failed write, reads them here
    reader.defer_weight_checks = not req.dry_run
    report = plan_state_dict(reader.tensor_keys, reader, req.output_dtypes)
    if reader.only is not None:  # planned from the whole: a layer's items may lie apart
        part = Part(req.only_shards, chosen, skipped, len(report.groups), unit="files")
        report = report.restricted(reader.only & set(reader.tensor_keys))
    result = Result(source.path, dst, "dcp", "", [("", report)], part=part)
    if target in ("safetensors", "sharded") and reader.object_keys:
        listed = ", ".join(reader.object_keys[:5])
        raise UsageError(
            f"--to {target}: the checkpoint holds non-tensor entries ({listed}), which "
            "safetensors cannot store; use --to dcp or --to torch to keep them"
        )
    if req.in_place and target != "dcp":
        raise UsageError("--in-place keeps the source's format; drop --to or give DST")
    if req.dry_run:
        if target == "torch":  # what the conversion would unpickle (or refuse to)
            reader.objects()
        result.status = "would-convert" if report.changed else "up-to-date"
        return result
    assert dst is not None
    if req.in_place and not report.changed:
        result.status = "current"
        return result
    total = sum(s.nbytes for k, s in _target_specs(reader, report).items() if _mine(reader, k))
    progress = request.progress_for(req, 3 * total)
    try:
        written = _stage_and_commit(req, reader, report, target, dst, progress, result)
    except (CheckpointError, NotInt8Error) as err:
        # re-plan with every value read: raises the full list of problems (as a dry run)
        reader.defer_weight_checks = False
        plan_state_dict(reader.tensor_keys, reader, req.output_dtypes)
        if isinstance(err, NotInt8Error):
            raise CheckpointError(f"{source.path}: a float weight holds {err}") from None
        raise
    finally:
        progress.close()
    result.written = written
    rewritten = report.changed or target != "dcp" or part is not None
    result.status = "converted" if rewritten else "current"
    result.verified = True
    return result


def _stage_and_commit(
    req: Request,
    reader: _Reader,
    report: UpgradeReport,
    target: str,
    dst: Path,
    progress: Progress,
    result: Result,
) -> list[Path]:
    """Write everything into a staging directory beside DST, verify it, rename it into
    place (a file target: the one file is moved). Nothing is left behind on failure."""
    single_file = target in ("torch", "safetensors")
    final = dst
    where = dst.parent if single_file else dst
    atomic.remove_stale_temps(where)
    staging = atomic.temp_name(where)
    # --jobs: DCP to DCP only (the other targets are single files or shards written in order)
    keys = [k for k in reader.tensor_keys if _mine(reader, k)]
    sizes = [reader.spec(k).nbytes for k in keys]
    rewrite = report.changed or reader.only is not None
    jobs = workers.count(req.jobs, sizes) if target == "dcp" and rewrite else 1
    staging.mkdir()
    try:
        progress.phase("writing")
        if target == "dcp" and not rewrite:  # already current: a verified byte copy
            names = _copy_files(reader.path, staging)
        elif target == "dcp":
            _write_dcp(reader, report, staging, progress, jobs, reader.only)
            if result.part is not None:
                _write_part_file(staging, reader, result.part, req.output_dtypes)
            names = sorted(p.name for p in staging.iterdir())
        elif target == "torch":
            names = _output_name(target, dst)
            _write_torch(reader, report, staging, names[0])
        elif target == "safetensors":
            names = _output_name(target, dst)
            _write_safetensors(reader, report, staging / names[0], reader.tensor_keys, progress)
        else:
            names = _write_sharded(reader, report, staging, progress)
        for name in names:
            with open(staging / name, "rb") as f:
                os.fsync(f.fileno())
        atomic.fsync_dir(staging)
        progress.phase("verifying")
        staged = _Reader(staging) if target == "dcp" else None  # its metadata read once
        if staged is not None and rewrite:
            objects = [k for k in reader.object_keys if _mine(reader, k)]
            _verify_objects(reader, staged, objects)
        if jobs > 1:
            _in_workers(_verify_items, reader, report, keys, jobs, progress, staging)
        else:
            written = staged if staged is not None else _reopen(target, staging, names, reader)
            try:
                _verify(reader, report, written, keys, progress)
            finally:
                if isinstance(written, _Loaded):
                    written.close()
        if single_file:
            os.replace(staging / names[0], final)
            atomic.fsync_dir(final.parent)
            shutil.rmtree(staging, ignore_errors=True)
            progress.finish()
            return [final]
        _commit_directory(req, staging, reader.path, final, result)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress.finish()
    return [final / name for name in names]


def _copy_files(source: Path, staging: Path) -> list[str]:
    """Copy every file of the DCP directory; each copy's digest must equal the source's."""
    names = sorted(p.name for p in source.iterdir() if p.is_file())
    for name in names:
        shutil.copyfile(source / name, staging / name)
        if commit.sha256(staging / name) != commit.sha256(source / name):
            raise CheckpointError(f"verification failed: the copy of {source / name} differs")
    return names


def _commit_directory(
    req: Request, staging: Path, source: Path, final: Path, result: Result
) -> None:
    """Rename the staged directory to ``final``; in place, the source first becomes
    ``SRC.bak`` (never overwritten) and comes back if the second rename fails."""
    if req.in_place:
        bak = atomic.backup_path(source)
        commit.check_backup_free(source)
        os.rename(source, bak)
        try:
            os.rename(staging, source)
        except BaseException:
            os.rename(bak, source)
            raise
        atomic.fsync_dir(source.parent)
        result.backups.append(bak)
        return
    atomic.rename_into_place(staging, final)  # final: empty (checked when resolving)


class DcpFormat(files.FileFormat):
    """A ``torch.distributed.checkpoint`` directory (recognised by ``.metadata`` or
    ``*.distcp`` files)."""

    name = "dcp"
    run = staticmethod(convert)
    merge_parts = staticmethod(merge)

    def detect(self, path: Path) -> Path | None:
        if not path.is_dir():
            return None
        if (path / METADATA).exists() or any(path.glob("*.distcp")):
            if (path / PART_FILE).exists():
                request.refuse_part(path, path / PART_FILE)
            return path
        return None

    def open(
        self, path: Path, *, trust_pickle: bool, classes: Classes | None = None
    ) -> files.Opened:
        reader = _Reader(path, trust_pickle=trust_pickle, classes=classes)
        return files.Opened(
            list(reader.tensor_keys),
            reader,
            objects=reader.objects,
            shape=lambda flat: nested(flat, reader.metadata),
        )


FORMAT: DcpFormat = DcpFormat()
