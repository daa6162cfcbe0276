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

The format of SRC is found in :data:`compat.checkpoint.files.REGISTRY` (one module per
format); the request types live in :mod:`compat.checkpoint.request`, the atomic commit
in :mod:`compat.checkpoint.commit`. :func:`merge` (``python -m compat merge``) puts the
parts of a conversion split across hosts (``--only-shards``) together.
"""

from __future__ import annotations

from pathlib import Path

from compat.checkpoint import files
from compat.checkpoint.request import (
    Request,
    Result,
    Source,
    UsageError,
    require_new_directory,
    resolve_destination,
    same_file,
)
from compat.formats.errors import CheckpointError

__all__ = ["Request", "Result", "UsageError", "convert", "merge", "resolve_source"]


def resolve_source(src: Path) -> Source:
    """The :class:`Source` (format name and file) of ``src``; raises UsageError."""
    return files.detect(src)


def convert(req: Request) -> Result:
    """Run one conversion; raise :class:`UsageError` or :class:`CheckpointError`."""
    source = resolve_source(req.src)
    dst = resolve_destination(req, source)
    try:
        return files.by_name(source.kind).convert(req, source, dst)
    except OSError as err:
        raise CheckpointError(f"{type(err).__name__}: {err}") from None


def merge(src: Path, dst: Path, parts: list[Path]) -> list[Path]:
    """Put the parts of an ``--only-shards`` conversion of ``src`` together into the new
    directory ``dst``; the files written. Raises :class:`UsageError` or
    :class:`CheckpointError` (``dst`` then does not exist)."""
    source = resolve_source(src)
    require_new_directory(dst, f"{dst}: exists; the merge writes a new (or empty) directory")
    for part in parts:
        if not part.is_dir():
            raise UsageError(f"{part}: not a directory (a part written by upgrade --only-shards)")
        if same_file(part, dst) or same_file(part, source.path):
            raise UsageError(f"{part}: a part cannot be SRC or DST")
    try:
        return files.by_name(source.kind).merge(source, dst, parts)
    except OSError as err:
        raise CheckpointError(f"{type(err).__name__}: {err}") from None
