"""Atomic commit and rollback of converted files, shared by every file format.

Every output is written to a temporary file next to its destination, flushed and fsynced,
verified, and only then moved into place with ``os.replace``; in place, ``SRC.bak`` is
kept first and never overwritten, and a failed multi-file commit is rolled back.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from compat.checkpoint import atomic
from compat.checkpoint.progress import Progress
from compat.checkpoint.request import Request, Result, Source
from compat.formats.errors import CheckpointError
from compat.formats.rules import NotInt8Error


def copy_verified(src: Path, tmp: atomic.TempFile, progress: Progress | None) -> None:
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
    if sha256(tmp.path) != digest.hexdigest():
        raise CheckpointError(f"verification failed: the copy of {src} differs from it")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def writing(dst: Path) -> Iterator[atomic.TempFile]:
    """A temporary file for ``dst``; removed on any failure, write errors reported."""
    try:
        tmp = atomic.TempFile(dst)
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


def commit(tmp: atomic.TempFile, *, backup_of: Path | None, result: Result) -> None:
    """Move ``tmp`` into place, first keeping ``backup_of`` as ``.bak`` (in place). If the
    replace fails, the backup this run made is removed again: the file is unchanged and
    the next run is not refused because of a stale backup."""
    bak = atomic.make_backup(backup_of) if backup_of is not None else None
    try:
        tmp.commit()
    except BaseException as err:
        if bak is not None and not tmp.committed:
            try:
                atomic.remove_backup(bak)
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


def commit_all(temps: list[atomic.TempFile], index: Path, result: Result) -> None:
    """Commit the files of a sharded checkpoint in place, all or nothing.

    Each file is backed up (``.bak``) and replaced, shards first and the index last. If
    any step fails, the files already replaced are restored from the backups this run
    made, and those backups are removed, so the checkpoint is exactly as before. If the
    restoring fails too, the error lists the state of every file.
    """
    done: list[tuple[atomic.TempFile, Path]] = []  # replaced, with the original's backup
    pending: tuple[atomic.TempFile, Path] | None = None  # backed up, maybe replaced
    try:
        for tmp in temps:
            bak = atomic.make_backup(tmp.dst)
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
                    atomic.remove_backup(pending[1])
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
            bak = atomic.backup_path(tmp.dst)
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


def _roll_back(done: list[tuple[atomic.TempFile, Path]]) -> dict[Path, str]:
    """Move the backups of the replaced files back, last first; return the files whose
    restore failed, with the reason."""
    failed: dict[Path, str] = {}
    for tmp, bak in reversed(done):
        try:
            atomic.restore_backup(bak, tmp.dst)
        except OSError as err:
            failed[tmp.dst] = f"{type(err).__name__}: {err}"
    return failed


def write_verified(
    req: Request,
    source: Source,
    dst: Path,
    result: Result,
    progress: Progress,
    write: Callable[[IO[bytes]], None],
    verify: Callable[[Path], None],
) -> Result:
    """Write a temporary file, fsync it, verify it, then move it into place."""
    with writing(dst) as tmp:
        assert tmp.file is not None
        progress.phase("writing")
        write(tmp.file)
        tmp.finish()
        progress.phase("verifying")
        verify(tmp.path)
        commit(tmp, backup_of=source.path if req.in_place else None, result=result)
    progress.finish()
    result.status = "converted"
    result.verified = True
    return result


def check_backup_free(path: Path) -> None:
    bak = atomic.backup_path(path)
    if bak.exists() or bak.is_symlink():
        raise CheckpointError(
            f"backup {bak} already exists and is never overwritten; move it away (or restore it) "
            "and run again"
        )
