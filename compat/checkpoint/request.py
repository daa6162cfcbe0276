"""What the offline converter is asked to do, and what it reports back."""

from __future__ import annotations

import fnmatch
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compat.checkpoint.progress import Progress
from compat.checkpoint.upgrade import UpgradeReport
from compat.formats.errors import CheckpointError

PROGRESS_DELAY_S = 1.0  # auto: no bar for conversions shorter than this


class UsageError(ValueError):
    """The arguments do not make sense together (CLI exit code 2)."""


@dataclass
class Request:
    src: Path
    dst: Path | None = None
    dry_run: bool = False
    in_place: bool = False
    trust_pickle: bool = False
    # pickled class name -> replacement class or "module:Class" (trusted pickles only)
    classes: dict[str, object] = field(default_factory=dict)
    output_dtypes: object = None
    progress: str = "auto"  # auto | always | never
    to: str | None = None  # output format of a DCP source: dcp | torch | safetensors | sharded
    jobs: int | None = None  # worker processes for sharded sources; None: default_jobs()
    # shell globs over the shard file names of a sharded safetensors index: convert only
    # the shards they match (one part of a conversion split across hosts)
    only_shards: tuple[str, ...] = ()


def only_shards_text(patterns: tuple[str, ...]) -> str:
    """The ``--only-shards`` options as given, for messages."""
    return " ".join(f"--only-shards {p!r}" for p in patterns)


def names_text(names: list[str] | tuple[str, ...], shown: int = 3) -> str:
    """The first ``shown`` names and how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


@dataclass(frozen=True)
class Part:
    """The shards one ``--only-shards`` conversion writes, of all the index lists (of a
    DCP directory: the ``.distcp`` files whose items it writes, of all the metadata names)."""

    patterns: tuple[str, ...]
    selected: tuple[str, ...]  # shard file names, in index order (DCP: .distcp files)
    skipped: tuple[str, ...]
    checkpoint_layers: int  # quantized linear layers of the whole checkpoint
    unit: str = "shards"  # what the patterns select: "shards", or "files" of a DCP directory

    @property
    def of(self) -> int:
        """Number of shards in the whole checkpoint."""
        return len(self.selected) + len(self.skipped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "patterns": list(self.patterns),
            "selected": list(self.selected),
            "skipped": list(self.skipped),
            "of": self.of,
        }

    def describe(self) -> str:
        """One line: which shards were selected and skipped."""
        return (
            f"{self.unit}: {len(self.selected)} of {self.of} selected by "
            f"{only_shards_text(self.patterns)} ({names_text(self.selected)}); "
            f"{len(self.skipped)} skipped"
            + (f" ({names_text(self.skipped)})" if self.skipped else "")
        )


def output_dtypes_text(output_dtypes: object) -> str:
    """``--output-dtype`` as a canonical string (recorded in a part, compared by merge):
    ``"none given"``, one dtype, or sorted ``MODULE=DTYPE`` entries."""
    if output_dtypes is None:
        return "none given"
    if isinstance(output_dtypes, dict):
        return ", ".join(f"{m}={d}" for m, d in sorted(output_dtypes.items()))
    return str(output_dtypes)


def refuse_part(path: Path, record: Path) -> None:
    """A part of a conversion in parts is not a checkpoint to read or convert: it holds
    only some of one (``record``: what says so)."""
    raise UsageError(
        f"{path}: one part of a conversion in parts (upgrade --only-shards; see {record.name}), "
        "holding only some of the checkpoint; put the parts together first with python -m "
        "compat merge SRC DST PART..., then use DST"
    )


class Holders:
    """Which part holds each shard (of a DCP directory: each item) in a merge of parts:
    :meth:`add` refuses one held twice, :meth:`check` one held by no part or unknown to
    the source. ``what``: the unit's name in messages; ``unit``: what the patterns select."""

    def __init__(self, source: Path, what: str, unit: str) -> None:
        self.source, self.what, self.unit = source, what, unit
        self.home: dict[str, Path] = {}
        self._options: tuple[Path, object] | None = None

    def same_options(self, part: Path, output_dtype: object) -> None:
        """Every part must be converted with the same ``--output-dtype`` (as recorded)."""
        if self._options is None:
            self._options = (part, output_dtype)
        elif self._options[1] != output_dtype:
            first, given = self._options
            raise CheckpointError(
                f"{first} and {part} were converted with different --output-dtype ({given} and "
                f"{output_dtype}); convert every part with the same options"
            )

    def add(self, part: Path, names: list[str]) -> None:
        for name in names:
            if name in self.home:
                raise CheckpointError(
                    f"{self.home[name]} and {part} both hold {name!r}: the parts overlap (give "
                    f"each host --only-shards patterns that select disjoint {self.unit})"
                )
            self.home[name] = part

    def check(self, wanted: list[str]) -> None:
        missing = [name for name in wanted if name not in self.home]
        if missing:
            raise CheckpointError(
                f"no part holds {len(missing)} {self.what}(s) of {self.source} "
                f"({names_text(missing)}): a part is missing, or the parts' --only-shards "
                f"patterns do not cover every {self.unit.rstrip('s')}"
            )
        known = set(wanted)
        extra = [name for name in self.home if name not in known]
        if extra:
            raise CheckpointError(
                f"{self.home[extra[0]]}: holds {extra[0]!r}, which {self.source} lacks"
            )


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
    part: Part | None = None  # --only-shards: the reports are about the selected shards

    @property
    def quant_layers(self) -> int:
        """Quantized linear layers found in every state_dict of the source (of a part:
        those with a tensor in its shards)."""
        return sum(len(r.groups) for _, r in self.reports)

    @property
    def checkpoint_layers(self) -> int:
        """Quantized linear layers of the whole source checkpoint."""
        return self.part.checkpoint_layers if self.part is not None else self.quant_layers

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "destination": None if self.destination is None else str(self.destination),
            "kind": self.kind,
            "status": self.status,
            "changed": any(r.changed for _, r in self.reports),
            "quant_layers": self.quant_layers,
            "verified": self.verified,
            "written": [str(p) for p in self.written],
            "backups": [str(p) for p in self.backups],
            "notes": self.notes,
            "shards": None if self.part is None else self.part.to_dict(),
            "state_dicts": [{"location": loc or None, **r.to_dict()} for loc, r in self.reports],
        }

    def verdict(self) -> str:
        """One line: what was done."""
        verb = {
            "converted": f"converted: wrote {self.destination} (verified)",
            "current": "already current: nothing to change"
            + (f"; copied to {self.destination} (verified)" if self.written else ""),
            "would-convert": "dry run: would convert (nothing written)",
            "up-to-date": "dry run: already current (nothing written)",
        }[self.status]
        if self.part is not None:
            verb += f"; {len(self.part.selected)} of {self.part.of} {self.part.unit}"
        if self.backups:
            verb += f"; backup: {', '.join(map(str, self.backups))}"
        return verb

    def render(self, verbosity: int = 1) -> str:
        """0: the verdict only; 1: a summary per state_dict, then the verdict; 2: every
        layer and key."""
        lines = []
        if verbosity > 0:
            for loc, report in self.reports:
                if loc:
                    lines.append(f"state_dict {loc}:")
                lines.append(report.details() if verbosity > 1 else report.summary())
            lines.extend(f"note: {n}" for n in self.notes)
            if self.part is not None:
                lines.append(self.part.describe())
        lines.append(self.verdict())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render(1)


@dataclass(frozen=True)
class Source:
    kind: str  # torch | safetensors | sharded
    path: Path  # the file (the index file for sharded checkpoints)


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


_KINDS = {
    "torch": "a torch file",
    "safetensors": "a single safetensors file",
    "dcp": "a torch.distributed.checkpoint directory",
}


def select(
    patterns: tuple[str, ...], names: tuple[str, ...], where: Path, what: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ``names`` (file names, in their order) that any of the ``--only-shards``
    ``patterns`` (shell globs, case sensitive) matches, and the others; UsageError for a
    pattern that matches none (``what``: the files ``where`` lists, for the message)."""
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise UsageError(
                f"--only-shards {pattern!r}: matches no {what} of {where}; allowed: a shell "
                f"glob over the file names of its {len(names)} {what}(s), e.g. {names_text(names)}"
            )
    chosen = tuple(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))
    return chosen, tuple(n for n in names if n not in chosen)


def check_only_shards(req: Request, source: Source) -> None:
    """``--only-shards`` needs a sharded or DCP source and a new DST (not ``--in-place``);
    a DCP part is written as DCP."""
    if not req.only_shards:
        return
    given = only_shards_text(req.only_shards)
    if source.kind not in ("sharded", "dcp"):
        raise UsageError(
            f"{given}: the option applies to sharded safetensors checkpoints (a "
            "*.safetensors.index.json or a directory holding one) and torch.distributed."
            f"checkpoint directories only; {req.src} was detected as "
            f"{_KINDS.get(source.kind, source.kind)}"
        )
    if source.kind == "dcp" and req.to not in (None, "dcp"):
        raise UsageError(
            f"{given}: a part of a DCP conversion is written as a DCP directory (the parts are "
            f"then merged with python -m compat merge); --to {req.to} cannot be combined with it"
        )
    if req.in_place:
        raise UsageError(
            f"{given}: cannot be combined with --in-place (converting some shards in place "
            "would leave a checkpoint mixing converted and legacy shards); allowed: a new DST "
            "directory for the selected shards, or --dry-run"
        )


def resolve_destination(req: Request, source: Source) -> Path | None:
    check_only_shards(req, source)
    if req.in_place and req.dst is not None:
        raise UsageError("give either DST or --in-place, not both")
    if req.in_place and req.dry_run:
        raise UsageError("--dry-run writes nothing; it cannot be combined with --in-place")
    if req.to is not None and source.kind != "dcp" and req.to != source.kind:
        raise UsageError(
            f"--to {req.to}: format conversion is supported from a torch.distributed.checkpoint "
            f"directory only; this source is {source.kind}"
        )
    if req.dst is None:
        if req.in_place:
            return source.path.parent if source.kind == "sharded" else source.path
        if req.dry_run:
            return None
        raise UsageError("give DST, --in-place or --dry-run")
    dst = req.dst
    if source.kind == "dcp":
        return _dcp_destination(req, source, dst)
    if source.kind == "sharded":
        require_new_directory(
            dst, f"{dst}: the destination of a sharded checkpoint must be a new or empty directory"
        )
        if same_file(dst, source.path.parent):
            raise UsageError("DST is the source directory; use --in-place")
        return dst
    if dst.is_dir():
        dst = dst / source.path.name
    if not dst.parent.is_dir():
        raise UsageError(f"{dst.parent}: no such directory")
    if same_file(dst, source.path):
        raise UsageError("DST is the source file; use --in-place to replace it (keeping SRC.bak)")
    st_out = dst.name.endswith(".safetensors")
    if st_out != (source.kind == "safetensors"):
        raise UsageError(
            f"{dst}: the output keeps the source's format ({source.kind}); format conversion is "
            "not supported, so name DST "
            f"{'*.safetensors' if source.kind == 'safetensors' else 'not *.safetensors'}"
        )
    return dst


def require_new_directory(dst: Path, message: str) -> None:
    """``dst`` must be absent or an empty directory (else UsageError ``message``), in a
    directory that exists."""
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise UsageError(message)
    if not dst.parent.is_dir():
        raise UsageError(f"{dst.parent}: no such directory")


def _dcp_destination(req: Request, source: Source, dst: Path) -> Path:
    """DCP source: a new or empty directory for ``--to dcp|sharded``, else a file."""
    if same_file(dst, source.path):
        raise UsageError("DST is the source directory; use --in-place")
    if (req.to or "dcp") in ("dcp", "sharded"):
        require_new_directory(dst, f"{dst}: the destination must be a new or empty directory")
        return dst
    if dst.is_dir():
        dst = dst / ("model.pt" if req.to == "torch" else "model.safetensors")
    if not dst.parent.is_dir():
        raise UsageError(f"{dst.parent}: no such directory")
    return dst


def default_jobs(largest_bytes: int) -> int:
    """The usable cores, capped so that two copies of the largest shard per worker fit in
    the available memory (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return max(cores, 1)
    by_memory = available // max(2 * largest_bytes, 1)
    return max(1, min(cores, int(by_memory)))


def progress_for(req: Request, total: int) -> Progress:
    """``always``: drawn from the start; ``never``: not at all; ``auto``: on a terminal
    only, and only once the conversion has run for a second (short ones stay quiet)."""
    if req.progress == "always":
        return Progress(total, enabled=True)
    if req.progress == "never":
        return Progress(total, enabled=False)
    return Progress(total, enabled=sys.stderr.isatty(), delay=PROGRESS_DELAY_S)
