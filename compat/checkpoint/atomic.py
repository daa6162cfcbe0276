"""Atomic file replacement: temporary file in the destination's directory, flushed and
fsynced, then ``os.replace``; backups that never overwrite; stale temporaries of killed
runs removed."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import IO

from compat.formats.errors import CheckpointError

TMP_TAG = ".compat-tmp-"


def temp_name(dst: Path) -> Path:
    """``.NAME.compat-tmp-PID-RANDOM`` next to ``dst`` (the pid lets later runs clean up)."""
    return dst.parent / f".{dst.name}{TMP_TAG}{os.getpid()}-{secrets.token_hex(4)}"


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mode_of(path: Path) -> int | None:
    """The permission bits of an existing regular file, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None


class TempFile:
    """A temporary file that becomes ``dst`` only on :meth:`commit`.

    Where ``dst`` already exists (``--in-place``, or a DST being overwritten) the
    temporary gets its permission bits before anything is written, so a private
    checkpoint stays private, also while it is being written; a new ``dst`` gets the
    default mode (umask)."""

    def __init__(self, dst: Path) -> None:
        self.dst = dst
        self.path = temp_name(dst)
        self.file: IO[bytes] | None = open(self.path, "xb")
        self._discarded = False
        mode = _mode_of(dst)
        if mode is not None:
            try:
                os.fchmod(self.file.fileno(), mode)
            except BaseException:
                self.discard()
                raise

    @classmethod
    def adopt(cls, dst: Path, path: Path) -> TempFile:
        """A finished temporary at ``path`` (written by another process) for ``dst``."""
        tmp = cls.__new__(cls)
        tmp.dst, tmp.path, tmp.file, tmp._discarded = dst, path, None, False
        return tmp

    @property
    def committed(self) -> bool:
        """Whether :meth:`commit` moved the file into place: finished, not discarded,
        and the temporary is gone (robust to an interruption inside :meth:`commit`)."""
        return not self._discarded and self.file is None and not os.path.lexists(self.path)

    def finish(self) -> None:
        """Flush and fsync; after this the file is complete on disk."""
        assert self.file is not None
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.file = None

    def commit(self) -> None:
        os.replace(self.path, self.dst)
        fsync_dir(self.dst.parent)

    def discard(self) -> None:
        if self.committed:
            return  # it is the destination now
        self._discarded = True
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temps(dst: Path) -> list[Path]:
    """Delete temporaries that a killed run left next to ``dst``; return what was removed."""
    removed: list[Path] = []
    prefix = f".{dst.name}{TMP_TAG}"
    try:
        candidates = [p for p in dst.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for path in candidates:
        pid_text = path.name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


def make_backup(path: Path) -> Path:
    """``PATH.bak``, a hard link (or copy) of ``path``; never overwrites an existing backup."""
    bak = backup_path(path)
    if bak.exists() or bak.is_symlink():
        raise CheckpointError(
            f"backup {bak} already exists and is never overwritten; move it away (or restore it) "
            "and run again"
        )
    try:
        link_or_copy(path, bak)
    except FileExistsError:
        raise CheckpointError(f"backup {bak} already exists and is never overwritten") from None
    fsync_dir(bak.parent)
    return bak


def link_or_copy(path: Path, new: Path) -> None:
    """``new``, a hard link to ``path``, or where links are impossible (another file
    system) a copy with its permission bits, fsynced; never overwrites (FileExistsError)."""
    try:
        os.link(path, new)
    except FileExistsError:
        raise
    except OSError:  # no hard links here: copy, still refusing to overwrite
        with open(path, "rb") as src, open(new, "xb") as out:
            mode = _mode_of(path)
            if mode is not None:
                os.fchmod(out.fileno(), mode)
            shutil.copyfileobj(src, out, 16 * 2**20)
            out.flush()
            os.fsync(out.fileno())


def restore_backup(bak: Path, path: Path) -> None:
    """Move a backup made by :func:`make_backup` back over ``path`` (atomic)."""
    os.replace(bak, path)
    fsync_dir(path.parent)


def remove_backup(bak: Path) -> None:
    """Delete a backup this run made whose file was never replaced."""
    bak.unlink()
    fsync_dir(bak.parent)


def rename_into_place(staging: Path, dst: Path) -> None:
    """Rename the staged directory ``staging`` to ``dst`` (absent, or empty: removed
    first, since a rename cannot replace a directory portably), durably."""
    if dst.exists():
        dst.rmdir()  # fails unless empty
    os.rename(staging, dst)
    fsync_dir(dst.parent)


def assemble_directory(dst: Path, links: list[tuple[Path, str]], written: dict[str, bytes]) -> None:
    """Make the new directory ``dst`` (absent or empty) from hard links (or copies, see
    :func:`link_or_copy`) of the files ``links`` names, each ``(path, name in dst)``, and
    the files ``written`` (name: content), fsynced: built in a sibling temporary
    directory, then renamed into place, so ``dst`` appears complete or not at all."""
    remove_stale_temps(dst)
    staging = temp_name(dst)
    staging.mkdir()
    try:
        for path, name in links:
            link_or_copy(path, staging / name)
        for name, content in written.items():
            with open(staging / name, "xb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(staging)
        rename_into_place(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
