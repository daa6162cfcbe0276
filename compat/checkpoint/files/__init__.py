"""Checkpoint file formats: one module per format behind one small interface.

A format (:class:`FileFormat`) can tell whether a path is one of its files
(:meth:`~FileFormat.detect`), open it as the planner's :class:`~compat.formats.rules.Access`
(:meth:`~FileFormat.open`), and convert it: plan, write to a temporary file, verify by
re-reading, then commit atomically (:meth:`~FileFormat.convert`, built on
:mod:`compat.checkpoint.commit`); formats converted in parts (``--only-shards``) also put
the parts together (:meth:`~FileFormat.merge`). :func:`detect` looks a path up in
:data:`REGISTRY`; ``compat.checkpoint.converter`` and ``compat.load_legacy`` use nothing
else, so a new format is one new module registered here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compat.checkpoint.request import Request, Result, Source, UsageError
from compat.checkpoint.unpickler import Classes
from compat.checkpoint.upgrade import OutputDtypes, upgrade_state_dict
from compat.formats.rules import Access


@dataclass
class Opened:
    """A checkpoint opened for reading: its tensor names in file order, the planner's
    :class:`~compat.formats.rules.Access` to them, and how to close it. ``upgrade``: a
    format's own in-memory upgrade (torch files hold dicts of state_dicts); ``objects``:
    non-tensor entries kept beside the tensors; ``shape``: how the result is nested."""

    keys: list[str]
    access: Access
    closer: Callable[[], None] | None = None
    upgrade: Callable[[OutputDtypes], Any] | None = None
    objects: Callable[[], dict[str, Any]] | None = None
    #: the upgraded entries (by flat name) in the structure the format saved them in
    shape: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def close(self) -> None:
        if self.closer is not None:
            self.closer()


Convert = Callable[[Request, Source, "Path | None"], Result]
Merge = Callable[[Source, Path, list[Path]], list[Path]]


class FileFormat:
    """One checkpoint file format (see the package docstring). A subclass provides
    ``name``, :meth:`detect`, :meth:`open` and ``run`` (its module's conversion)."""

    name: str = ""
    run: Convert
    #: puts the parts of an ``--only-shards`` conversion together (formats that have parts)
    merge_parts: Merge | None = None

    def detect(self, path: Path) -> Path | None:
        """The file to read if ``path`` is in this format (for a sharded checkpoint,
        its index), else None; raises UsageError for a path that is in this format but
        unusable."""
        raise NotImplementedError

    def open(self, path: Path, *, trust_pickle: bool, classes: Classes | None = None) -> Opened:
        """Open the (detected) file for planning; nothing is converted. ``classes``: see
        :data:`compat.checkpoint.unpickler.Classes` (trusted pickles only)."""
        raise NotImplementedError

    def load(
        self,
        path: Path,
        *,
        trust_pickle: bool,
        output_dtypes: OutputDtypes,
        classes: Classes | None = None,
    ) -> Any:
        """The upgraded state_dict (or dict of state_dicts) the file holds, in memory."""
        opened = self.open(path, trust_pickle=trust_pickle, classes=classes)
        try:
            if opened.upgrade is not None:
                return opened.upgrade(output_dtypes)
            state = {key: opened.access.tensor(key) for key in opened.keys}
            upgraded = upgrade_state_dict(state, output_dtypes=output_dtypes)
            if opened.objects is not None:
                upgraded.update(opened.objects())
            return upgraded if opened.shape is None else opened.shape(upgraded)
        finally:
            opened.close()

    def convert(self, req: Request, source: Source, dst: Path | None) -> Result:
        """Plan, write, verify and commit one conversion (DST None: a dry run)."""
        return type(self).run(req, source, dst)

    def merge(self, source: Source, dst: Path, parts: list[Path]) -> list[Path]:
        """Put the parts of an ``--only-shards`` conversion of ``source`` together into
        the new directory ``dst``, all or nothing; the files written."""
        merge_parts = type(self).merge_parts
        if merge_parts is None:
            raise UsageError(
                f"{source.path}: a {self.name} checkpoint is converted in one piece; parts (and "
                "merge) exist for sharded safetensors checkpoints and DCP directories only"
            )
        return merge_parts(source, dst, parts)


#: Formats in detection order; the last one (torch files) accepts any file. Filled at
#: the end of this module.
REGISTRY: list[FileFormat] = []


def register(fmt: FileFormat, *, catch_all: bool = False) -> FileFormat:
    """Add ``fmt`` to the registry, before the catch-all format (or as it)."""
    if catch_all or not REGISTRY:
        REGISTRY.append(fmt)
    else:
        REGISTRY.insert(len(REGISTRY) - 1, fmt)
    return fmt


def formats() -> Iterator[FileFormat]:
    yield from REGISTRY


def by_name(name: str) -> FileFormat:
    for fmt in REGISTRY:
        if fmt.name == name:
            return fmt
    raise KeyError(name)


def detect(src: Path) -> Source:
    """The :class:`Source` for ``src``: the first registered format that claims it."""
    if not src.exists():
        raise UsageError(f"{src}: no such file or directory")
    for fmt in REGISTRY:
        path = fmt.detect(src)
        if path is not None:
            return Source(fmt.name, path)
    raise UsageError(f"{src}: not a checkpoint file or directory compat can read")


# The built-in formats, each in its own module (they import this package's interface).
from compat.checkpoint.files import dcp, safetensors_file, sharded, torchfile  # noqa: E402

register(torchfile.FORMAT, catch_all=True)
register(dcp.FORMAT)
register(sharded.FORMAT)
register(safetensors_file.FORMAT)
