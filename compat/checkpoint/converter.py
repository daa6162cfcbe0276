"""The offline converter behind ``python -m compat upgrade SRC [DST]``.

Sources: a torch file (zip or legacy serialization; a state_dict, a dict holding
state_dicts, or, with ``trust_pickle``, a whole-module pickle), a ``.safetensors`` file,
or a Hugging Face sharded checkpoint (a directory holding one ``*.index.json``, or that
index file). Everything is read on the CPU with ``weights_only=True`` and ``mmap=True``
where the format allows it.

Guarantees: the source is never modified (except with ``in_place``, which first keeps
``SRC.bak`` and never overwrites an existing backup); every output is written to a
temporary file in the destination's directory, flushed and fsynced, verified by
reloading it (every tensor bit-identical to the source except those the report lists
as transformed, which must equal the documented transformation of their source), and
only then moved into place with ``os.replace`` (a sharded destination directory is
built aside and renamed). An error at any point leaves no partial or temporary file; a
process killed outright can leave a temporary (never a partial destination), which the
next run for the same destination removes. ``in_place`` is all or nothing: a failed
replace removes the backup it made, and a sharded checkpoint whose files were partly
replaced is restored from this run's backups (or the error lists each file's state). A
replaced file keeps its permission bits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from compat.checkpoint import _atomic, _safetensors, _torchfile
from compat.checkpoint._progress import Progress
from compat.checkpoint._safetensors import SafetensorsFile
from compat.checkpoint._torchfile import Location
from compat.checkpoint.upgrade import UpgradeReport, plan_state_dict
from compat.formats.errors import CheckpointError
from compat.formats.rules import (
    RESTORE,
    DictAccess,
    NotInt8Error,
    Spec,
    restored_chunks,
    transform_chunk,
)

PROGRESS_MIN_BYTES = 256 * 2**20


class UsageError(ValueError):
    """The arguments do not make sense together (CLI exit code 2)."""


@dataclass
class Request:
    src: Path
    dst: Path | None = None
    dry_run: bool = False
    in_place: bool = False
    trust_pickle: bool = False
    output_dtypes: object = None
    progress: str = "auto"  # auto | always | never


@dataclass
class Result:
    source: Path
    destination: Path | None
    kind: str
    status: str  # converted | current | would-convert | up-to-date
    reports: list[tuple[str, UpgradeReport]]
    written: list[Path] = field(default_factory=list)
    backups: list[Path] = field(default_factory=list)
    verified: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "destination": None if self.destination is None else str(self.destination),
            "kind": self.kind,
            "status": self.status,
            "changed": any(r.changed for _, r in self.reports),
            "verified": self.verified,
            "written": [str(p) for p in self.written],
            "backups": [str(p) for p in self.backups],
            "notes": self.notes,
            "state_dicts": [{"location": loc or None, **r.to_dict()} for loc, r in self.reports],
        }

    def __str__(self) -> str:
        lines = []
        for loc, report in self.reports:
            if loc:
                lines.append(f"state_dict {loc}:")
            lines.append(str(report))
        lines.extend(f"note: {n}" for n in self.notes)
        verb = {
            "converted": f"converted: wrote {self.destination} (verified)",
            "current": "already current: nothing to change"
            + (f"; copied to {self.destination} (verified)" if self.written else ""),
            "would-convert": "dry run: would convert (nothing written)",
            "up-to-date": "dry run: already current (nothing written)",
        }[self.status]
        if self.backups:
            verb += f"; backup: {', '.join(map(str, self.backups))}"
        lines.append(verb)
        return "\n".join(lines)


# --------------------------------------------------------------------------- resolving
@dataclass(frozen=True)
class Source:
    kind: str  # torch | safetensors | sharded
    path: Path  # the file (the index file for sharded checkpoints)


def resolve_source(src: Path) -> Source:
    if not src.exists():
        raise UsageError(f"{src}: no such file or directory")
    if src.is_dir():
        indexes = sorted(src.glob("*.index.json"))
        if len(indexes) != 1:
            found = ", ".join(p.name for p in indexes) or "none"
            raise UsageError(
                f"{src}: a directory source must hold exactly one Hugging Face *.index.json "
                f"(found: {found}); pass the index file or a single checkpoint file instead"
            )
        return Source("sharded", indexes[0])
    if src.name.endswith(".index.json"):
        return Source("sharded", src)
    if _safetensors.is_safetensors(src):
        return Source("safetensors", src)
    return Source("torch", src)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def resolve_destination(req: Request, source: Source) -> Path | None:
    if req.in_place and req.dst is not None:
        raise UsageError("give either DST or --in-place, not both")
    if req.in_place and req.dry_run:
        raise UsageError("--dry-run writes nothing; it cannot be combined with --in-place")
    if req.dst is None:
        if req.in_place:
            return source.path.parent if source.kind == "sharded" else source.path
        if req.dry_run:
            return None
        raise UsageError("give DST, --in-place or --dry-run")
    dst = req.dst
    if source.kind == "sharded":
        if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
            raise UsageError(
                f"{dst}: the destination of a sharded checkpoint must be a new or empty directory"
            )
        if _same_file(dst, source.path.parent):
            raise UsageError("DST is the source directory; use --in-place")
        if not dst.parent.is_dir():
            raise UsageError(f"{dst.parent}: no such directory")
        return dst
    if dst.is_dir():
        dst = dst / source.path.name
    if not dst.parent.is_dir():
        raise UsageError(f"{dst.parent}: no such directory")
    if _same_file(dst, source.path):
        raise UsageError("DST is the source file; use --in-place to replace it (keeping SRC.bak)")
    st_out = dst.name.endswith(".safetensors")
    if st_out != (source.kind == "safetensors"):
        raise UsageError(
            f"{dst}: the output keeps the source's format ({source.kind}); format conversion is "
            "not supported, so name DST "
            f"{'*.safetensors' if source.kind == 'safetensors' else 'not *.safetensors'}"
        )
    return dst


def _progress(req: Request, total: int, many: bool) -> Progress:
    import sys

    if req.progress == "always":
        enabled = True
    elif req.progress == "never":
        enabled = False
    else:
        enabled = sys.stderr.isatty() and (many or total >= PROGRESS_MIN_BYTES)
    return Progress(total, enabled=enabled)


# --------------------------------------------------------------------------- helpers
def _copy_verified(src: Path, tmp: _atomic.TempFile, progress: Progress | None) -> None:
    """Byte copy into ``tmp`` (fsynced), then re-read and compare digests."""
    assert tmp.file is not None
    digest = hashlib.sha256()
    with open(src, "rb") as f:
        while chunk := f.read(16 * 2**20):
            digest.update(chunk)
            tmp.file.write(chunk)
            if progress is not None:
                progress.advance(len(chunk))
    tmp.finish()
    if _sha256(tmp.path) != digest.hexdigest():
        raise CheckpointError(f"verification failed: the copy of {src} differs from it")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _writing(dst: Path) -> Iterator[_atomic.TempFile]:
    """A temporary file for ``dst``; removed on any failure, write errors reported."""
    try:
        tmp = _atomic.TempFile(dst)
    except OSError as err:
        raise CheckpointError(f"cannot create a temporary file next to {dst}: {err}") from None
    try:
        yield tmp
    except (CheckpointError, NotInt8Error):
        tmp.discard()
        raise
    except Exception as err:
        tmp.discard()
        raise CheckpointError(
            f"writing {dst} failed, nothing was written: {type(err).__name__}: {err}"
        ) from None
    except BaseException:
        tmp.discard()
        raise


def _commit(tmp: _atomic.TempFile, *, backup_of: Path | None, result: Result) -> None:
    """Move ``tmp`` into place, first keeping ``backup_of`` as ``.bak`` (in place). If the
    replace fails, the backup this run made is removed again: the file is unchanged and
    the next run is not refused because of a stale backup."""
    bak = _atomic.make_backup(backup_of) if backup_of is not None else None
    try:
        tmp.commit()
    except BaseException as err:
        if bak is not None and not tmp.committed:
            try:
                _atomic.remove_backup(bak)
            except OSError as unlink_err:
                raise CheckpointError(
                    f"replacing {tmp.dst} failed ({type(err).__name__}: {err}); {tmp.dst} is "
                    f"unchanged, but the backup {bak} made for it could not be removed "
                    f"({unlink_err}): delete it before running again"
                ) from None
        raise
    if bak is not None:
        result.backups.append(bak)
    result.written.append(tmp.dst)


def _commit_all(temps: list[_atomic.TempFile], index: Path, result: Result) -> None:
    """Commit the files of a sharded checkpoint in place, all or nothing.

    Each file is backed up (``.bak``) and replaced, shards first and the index last. If
    any step fails, the files already replaced are restored from the backups this run
    made, and those backups are removed, so the checkpoint is exactly as before. If the
    restoring fails too, the error lists the state of every file.
    """
    done: list[tuple[_atomic.TempFile, Path]] = []  # replaced, with the original's backup
    pending: tuple[_atomic.TempFile, Path] | None = None  # backed up, maybe replaced
    try:
        for tmp in temps:
            bak = _atomic.make_backup(tmp.dst)
            pending = (tmp, bak)
            tmp.commit()
            done.append(pending)
            pending = None
    except BaseException as err:
        if pending is not None:
            if pending[0].committed:  # interrupted after the replace itself
                done.append(pending)
            else:
                with contextlib.suppress(OSError):
                    _atomic.remove_backup(pending[1])
        failed = _roll_back(done)
        leftover = pending is not None and not pending[0].committed and pending[1].exists()
        if not isinstance(err, Exception):
            raise  # KeyboardInterrupt and the like: rolled back as far as possible
        what = f"{type(err).__name__}: {err}"
        if not failed:
            restored = (
                f"the {len(done)} file(s) already replaced were restored from their backups; "
                if done
                else "no file was replaced; "
            )
            if not leftover:
                raise CheckpointError(
                    f"in-place conversion of {index} failed ({what}); {restored}the backups "
                    "this run made were removed: the checkpoint is unchanged"
                ) from None
            assert pending is not None
            raise CheckpointError(
                f"in-place conversion of {index} failed ({what}); {restored}every file is "
                f"original, but the backup {pending[1]} made by this run could not be removed: "
                "delete it before running again"
            ) from None
        states = []
        for tmp in temps:
            bak = _atomic.backup_path(tmp.dst)
            if tmp.dst in failed:
                states.append(
                    f"{tmp.dst}: CONVERTED; its original is {bak} (restoring it failed: "
                    f"{failed[tmp.dst]}); restore it with: mv {bak} {tmp.dst}"
                )
            elif any(t is tmp for t, _ in done):
                states.append(f"{tmp.dst}: original (restored from its backup)")
            elif pending is not None and pending[0] is tmp and leftover:
                states.append(
                    f"{tmp.dst}: original (never replaced); its backup {bak} made by this run "
                    "could not be removed: delete it"
                )
            else:
                states.append(f"{tmp.dst}: original (never replaced)")
        raise CheckpointError(
            f"in-place conversion of {index} failed ({what}) and restoring the original files "
            "failed too; the checkpoint is now mixed:\n" + "\n".join(f"  - {s}" for s in states)
        ) from None
    result.backups.extend(bak for _, bak in done)
    result.written.extend(tmp.dst for tmp, _ in done)


def _roll_back(done: list[tuple[_atomic.TempFile, Path]]) -> dict[Path, str]:
    """Move the backups of the replaced files back, last first; return the files whose
    restore failed, with the reason."""
    failed: dict[Path, str] = {}
    for tmp, bak in reversed(done):
        try:
            _atomic.restore_backup(bak, tmp.dst)
        except OSError as err:
            failed[tmp.dst] = f"{type(err).__name__}: {err}"
    return failed


def _write_verified(
    req: Request,
    source: Source,
    dst: Path,
    result: Result,
    progress: Progress,
    write: Callable[[IO[bytes]], None],
    verify: Callable[[Path], None],
) -> Result:
    """Write a temporary file, fsync it, verify it, then move it into place."""
    with _writing(dst) as tmp:
        assert tmp.file is not None
        progress.phase("writing")
        write(tmp.file)
        tmp.finish()
        progress.phase("verifying")
        verify(tmp.path)
        _commit(tmp, backup_of=source.path if req.in_place else None, result=result)
    progress.finish()
    result.status = "converted"
    result.verified = True
    return result


def _check_backup_free(path: Path) -> None:
    bak = _atomic.backup_path(path)
    if bak.exists() or bak.is_symlink():
        raise CheckpointError(
            f"backup {bak} already exists and is never overwritten; move it away (or restore it) "
            "and run again"
        )


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


# --------------------------------------------------------------------------- torch files
def _convert_torch(req: Request, source: Source, dst: Path | None) -> Result:
    size = source.path.stat().st_size
    progress = _progress(req, 3 * size, many=False)
    try:
        loaded = _torchfile.load(source.path, trust_pickle=req.trust_pickle)
        # the CRC pass reads the file with plain I/O; it overlaps planning and writing and
        # must succeed before anything is committed (or reported as convertible)
        crc = (
            _Background(_torchfile.check_zip_crc, source.path) if loaded.zip else _Background(None)
        )
        progress.phase("planning")
        try:
            plans = _torchfile.plan(loaded, req.output_dtypes, keep_results=not req.dry_run)
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
            _check_backup_free(source.path)
        _atomic.remove_stale_temps(dst)
        if not must_write:
            result.status = "current"
            if not req.in_place:
                with _writing(dst) as tmp:
                    progress.phase("copying")
                    _copy_verified(source.path, tmp, progress)
                    crc.wait()
                    _commit(tmp, backup_of=None, result=result)
                progress.finish()
                result.verified = True
            return result
        upgraded = _torchfile.apply(loaded.obj, plans, loaded.releaser)
        progress.retotal(progress.done + 2 * _torchfile.storage_bytes(upgraded))
        release = loaded.releaser

        def write(out: IO[bytes]) -> None:
            _torchfile.save(upgraded, out, releaser=release, progress=progress)

        def verify(path: Path) -> None:
            _torchfile.verify(
                path, upgraded, loaded.obj, plans, src_releaser=release, progress=progress
            )
            crc.wait()

        return _write_verified(req, source, dst, result, progress, write, verify)
    finally:
        progress.close()


# --------------------------------------------------------------------------- safetensors
@dataclass
class _StJob:
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


class _FilesAccess:
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


class _Deferred(_FilesAccess):
    """Float weights are checked while they are written (one read of the file instead of
    two); on a bad value the conversion re-plans with every value read and raises."""

    defer_weight_checks = True


def _write_safetensors(out: IO[bytes], job: _StJob, progress: Progress | None) -> None:
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
            crc = zlib.crc32(_safetensors.as_bytes(piece), crc)
            yield piece
        job.crcs[name] = crc

    entries = [(name, job.spec(name)) for name in job.names]
    advance = progress.advance if progress is not None else None
    _safetensors.write(out, entries, job.metadata, produce, advance)


def _verify_safetensors(path: Path, job: _StJob, progress: Progress | None) -> None:
    """Reload: the safetensors package must read the same names, dtypes, shapes and
    metadata, and every tensor's bytes must have the CRC-32 of the bytes written.

    Every transformed tensor must also be the documented transformation of its source
    tensor, checked as for torch files (:func:`_torchfile.documented_transformation_holds`),
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
                crc = zlib.crc32(_safetensors.as_bytes(piece), crc)
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
        _torchfile.documented_transformation_holds(action, src, got) for src, got in pairs
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
    job: _StJob,
    replan: Callable[[], object],
) -> Result:
    """Write, verify and commit one safetensors file. A float weight found not to hold
    int8 values while writing aborts it; ``replan()`` (every value read) then raises the
    full list of problems, as a dry run reports them."""
    try:
        return _write_verified(
            req,
            source,
            dst,
            result,
            progress,
            lambda out: _write_safetensors(out, job, progress),
            lambda path: _verify_safetensors(path, job, progress),
        )
    except NotInt8Error as err:
        replan()
        raise CheckpointError(
            f"{source.path}: a float weight holds {err}, not an int8 value"
        ) from None


def _convert_safetensors(req: Request, source: Source, dst: Path | None) -> Result:
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
        progress = _progress(req, 2 * source.path.stat().st_size, many=False)
        try:
            if req.in_place and report.changed:
                _check_backup_free(source.path)
            _atomic.remove_stale_temps(dst)
            if not report.changed:
                result.status = "current"
                if not req.in_place:
                    with _writing(dst) as tmp:
                        _copy_verified(source.path, tmp, progress)
                        _commit(tmp, backup_of=None, result=result)
                    progress.finish()
                    result.verified = True
                return result
            job = _StJob(files, names, sf.metadata, report)
            progress.retotal(2 * sum(job.spec(name).nbytes for name in names))
            full = _FilesAccess(files)
            replan = lambda: plan_state_dict(names, full, req.output_dtypes)  # noqa: E731
            return _write_st_job(req, source, dst, result, progress, job, replan)
        finally:
            progress.close()
    finally:
        sf.close()


# --------------------------------------------------------------------------- sharded
@dataclass
class _Shard:
    name: str
    path: Path
    kind: str
    st: SafetensorsFile | None = None
    loaded: _torchfile.Loaded | None = None

    def keys(self) -> list[str]:
        if self.st is not None:
            return list(self.st.entries)
        assert self.loaded is not None
        return [k for k, v in self.loaded.obj.items() if isinstance(v, torch.Tensor)]


class _MultiAccess:
    """:class:`Access` over the shards of a sharded checkpoint."""

    def __init__(self, owner: dict[str, _Shard]) -> None:
        self.owner = owner

    def _access(self, key: str) -> Any:
        shard = self.owner[key]
        if shard.st is not None:
            return shard.st
        assert shard.loaded is not None
        release = shard.loaded.releaser.release if shard.loaded.releaser is not None else None
        return DictAccess(shard.loaded.obj, release)

    def spec(self, key: str) -> Spec:
        result: Spec = self._access(key).spec(key)
        return result

    def tensor(self, key: str) -> torch.Tensor:
        result: torch.Tensor = self._access(key).tensor(key)
        return result

    def chunks(self, key: str) -> Iterator[torch.Tensor]:
        result: Iterator[torch.Tensor] = self._access(key).chunks(key)
        return result

    def is_meta(self, key: str) -> bool:
        return bool(self._access(key).is_meta(key))


def _read_index(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable JSON index ({err})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(
            f"{path}: not a Hugging Face index (no 'weight_map' of tensor names to shard files)"
        )
    for shard in set(weight_map.values()):
        if Path(shard).name != shard or shard in (".", ".."):
            raise CheckpointError(
                f"{path}: shard name {shard!r} is not a plain file name in the index's directory"
            )
    return index, weight_map


def _open_shards(
    index_path: Path, weight_map: dict[str, str], trust_pickle: bool
) -> dict[str, _Shard]:
    shards: dict[str, _Shard] = {}
    for name in dict.fromkeys(weight_map.values()):
        path = index_path.parent / name
        if not path.is_file():
            raise CheckpointError(f"{index_path}: shard {name!r} is missing")
        if _safetensors.is_safetensors(path):
            shards[name] = _Shard(name, path, "safetensors", st=SafetensorsFile(path))
        else:
            loaded = _torchfile.load(path, trust_pickle=trust_pickle)
            if not _torchfile.is_state_dict(loaded.obj):
                raise CheckpointError(f"{path}: a shard must hold one flat state_dict")
            if loaded.zip:
                _torchfile.check_zip_crc(path)
            shards[name] = _Shard(name, path, "torch", loaded=loaded)
    for shard in shards.values():
        for key in shard.keys():
            if weight_map.get(key) != shard.name:
                raise CheckpointError(
                    f"{index_path}: tensor {key!r} is in shard {shard.name!r} but the index maps "
                    f"it to {weight_map.get(key)!r}"
                )
    listed = {k for s in shards.values() for k in s.keys()}
    missing = sorted(set(weight_map) - listed)
    if missing:
        raise CheckpointError(
            f"{index_path}: the index lists {len(missing)} tensor(s) that no shard holds, e.g. "
            f"{missing[0]!r}"
        )
    return shards


def _write_shard(
    shard: _Shard, report: UpgradeReport, dst: Path, progress: Progress
) -> _atomic.TempFile:
    """Write and verify one upgraded shard as a temporary file (not yet committed)."""
    keys = set(shard.keys())
    own = _only(report, keys)
    with _writing(dst) as tmp:
        assert tmp.file is not None
        if shard.st is not None:
            names = list(shard.st.entries)
            job = _StJob(dict.fromkeys(names, shard.st), names, shard.st.metadata, own)
            _write_safetensors(tmp.file, job, progress)
            tmp.finish()
            _verify_safetensors(tmp.path, job, progress)
        else:
            assert shard.loaded is not None
            plans: list[tuple[Location, UpgradeReport]] = [((), own)]
            upgraded = _torchfile.apply(shard.loaded.obj, plans, shard.loaded.releaser)
            _torchfile.save(upgraded, tmp.file, releaser=shard.loaded.releaser, progress=progress)
            tmp.finish()
            _torchfile.verify(
                tmp.path,
                upgraded,
                shard.loaded.obj,
                plans,
                src_releaser=shard.loaded.releaser,
                progress=progress,
            )
        return tmp


def _only(report: UpgradeReport, keys: set[str]) -> UpgradeReport:
    """The part of a report about ``keys`` (one shard's tensors)."""
    from compat.formats.rules import GroupPlan

    groups = []
    for g in report.groups:
        mine = tuple(k for k in g.keys if k.key in keys)
        if mine:
            groups.append(GroupPlan(g.prefix, g.formats, g.output_dtype, mine, g.notes))
    return UpgradeReport(tuple(groups), (), 0)


def _new_index(index: dict[str, Any], report: UpgradeReport) -> bytes:
    out = json.loads(json.dumps(index))
    metadata = out.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("total_size"), int):
        metadata["total_size"] += sum(k.after.nbytes - k.before.nbytes for k in report.changes)
    return (json.dumps(out, indent=2) + "\n").encode()


def _convert_sharded(req: Request, source: Source, dst: Path | None) -> Result:
    index, weight_map = _read_index(source.path)
    shards = _open_shards(source.path, weight_map, req.trust_pickle)
    try:
        owner = {key: shards[name] for key, name in weight_map.items()}
        report = plan_state_dict(list(weight_map), _MultiAccess(owner), req.output_dtypes)
        result = Result(source.path, dst, "sharded", "", [("", report)])
        if req.dry_run:
            result.status = "would-convert" if report.changed else "up-to-date"
            return result
        assert dst is not None
        changed_keys = {k.key for k in report.changes}
        to_rewrite = [s for s in shards.values() if changed_keys & set(s.keys())]
        total = sum(s.path.stat().st_size for s in shards.values())
        progress = _progress(req, 2 * total, many=len(shards) > 1)
        try:
            if req.in_place:
                if not report.changed:
                    result.status = "current"
                    return result
                return _sharded_in_place(source, index, report, to_rewrite, progress, result)
            return _sharded_to_dir(source, index, report, shards, to_rewrite, dst, progress, result)
        finally:
            progress.close()
    finally:
        for shard in shards.values():
            if shard.st is not None:
                shard.st.close()


def _sharded_in_place(
    source: Source,
    index: dict[str, Any],
    report: UpgradeReport,
    to_rewrite: list[_Shard],
    progress: Progress,
    result: Result,
) -> Result:
    for path in [s.path for s in to_rewrite] + [source.path]:
        _check_backup_free(path)
    for path in [s.path for s in to_rewrite] + [source.path]:
        _atomic.remove_stale_temps(path)
    temps: list[_atomic.TempFile] = []
    try:
        for shard in to_rewrite:
            progress.phase(shard.name[:10])
            temps.append(_write_shard(shard, report, shard.path, progress))
        with _writing(source.path) as tmp:
            assert tmp.file is not None
            tmp.file.write(_new_index(index, report))
            tmp.finish()
        temps.append(tmp)
        _commit_all(temps, source.path, result)  # shards first, the index last
        progress.finish()
    except BaseException:
        for t in temps:
            t.discard()
        raise
    result.status = "converted"
    result.verified = True
    return result


def _sharded_to_dir(
    source: Source,
    index: dict[str, Any],
    report: UpgradeReport,
    shards: dict[str, _Shard],
    to_rewrite: list[_Shard],
    dst: Path,
    progress: Progress,
    result: Result,
) -> Result:
    _atomic.remove_stale_temps(dst)
    staging = _atomic.temp_name(dst)
    staging.mkdir()
    try:
        for shard in shards.values():
            target = staging / shard.name
            progress.phase(shard.name[:10])
            if shard in to_rewrite:
                tmp = _write_shard(shard, report, target, progress)
                tmp.commit()
            else:
                with _writing(target) as tmp:
                    _copy_verified(shard.path, tmp, progress)
                    tmp.commit()
        (staging / source.path.name).write_bytes(_new_index(index, report))
        with open(staging / source.path.name, "rb+") as f:
            os.fsync(f.fileno())
        _atomic.fsync_dir(staging)
        if dst.exists():
            dst.rmdir()  # empty (checked when resolving); rename cannot replace it portably
        os.rename(staging, dst)
        _atomic.fsync_dir(dst.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress.finish()
    result.written = [dst / s.name for s in shards.values()] + [dst / source.path.name]
    result.status = "converted" if report.changed else "current"
    result.verified = True
    return result


# --------------------------------------------------------------------------- entry point
def convert(req: Request) -> Result:
    """Run one conversion; raise :class:`UsageError` or :class:`CheckpointError`."""
    source = resolve_source(req.src)
    dst = resolve_destination(req, source)
    try:
        if source.kind == "sharded":
            return _convert_sharded(req, source, dst)
        if source.kind == "safetensors":
            return _convert_safetensors(req, source, dst)
        return _convert_torch(req, source, dst)
    except OSError as err:
        raise CheckpointError(f"{type(err).__name__}: {err}") from None
