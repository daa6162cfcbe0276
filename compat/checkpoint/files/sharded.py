"""Hugging Face sharded checkpoints: a ``*.index.json`` whose ``weight_map`` names the
shard (safetensors or torch file) holding each tensor.

Planned as one state_dict across shards; only the shards holding a changed tensor are
rewritten. A new destination directory is built aside and renamed; in place, the shards
and then the index are replaced all or nothing (:func:`compat.checkpoint.commit.commit_all`).

With ``only_shards`` (globs over the shard file names) the plan is still made from the
whole index, but only the matching shards are converted, verified and written, with an
index of their entries whose ``metadata`` records the part (:data:`PART_KEY`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compat.checkpoint import atomic, commit, files, request, workers
from compat.checkpoint.files import safetensors_file, torchfile
from compat.checkpoint.files.safetensors_file import SafetensorsFile
from compat.checkpoint.files.torchfile import Location
from compat.checkpoint.progress import Progress
from compat.checkpoint.request import (
    Part,
    Request,
    Result,
    Source,
    UsageError,
    only_shards_text,
)
from compat.checkpoint.unpickler import Classes
from compat.checkpoint.upgrade import (
    UpgradeReport,
    plan_state_dict,
)
from compat.formats.errors import CheckpointError
from compat.formats.rules import DictAccess, NotInt8Error, Spec


@dataclass
class _Shard:
    name: str
    path: Path
    kind: str
    st: SafetensorsFile | None = None
    loaded: torchfile.Loaded | None = None

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


class _DeferredMulti(_MultiAccess):
    """Float weights are checked while their shard is written (one read of the data
    instead of two); on a bad value the conversion re-plans with every value read."""

    defer_weight_checks = True


class _PartAccess(_MultiAccess):
    """Reads the float weights of the selected shards only: those of the other shards are
    checked by the conversion that writes them."""

    def __init__(self, owner: dict[str, _Shard], selected: Collection[str]) -> None:
        super().__init__(owner)
        self.selected = set(selected)

    def defers_weight_check(self, key: str) -> bool:
        return self.owner[key].name not in self.selected


#: The key of an ``--only-shards`` part's index ``metadata`` that says which shards of
#: the whole checkpoint it holds (see docs/checkpoints.md).
PART_KEY = "compat_part"


def select_shards(
    index_path: Path, names: tuple[str, ...], patterns: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The shards (file names, in index order) that any of ``patterns`` (shell globs, case
    sensitive) matches, and the others; raises UsageError for a pattern that matches
    none, or when a shard is not a safetensors file."""
    chosen, skipped = request.select(patterns, names, index_path, "shard")
    for name in names:
        path = index_path.parent / name
        if path.is_file() and not safetensors_file.is_safetensors(path):
            raise UsageError(
                f"{only_shards_text(patterns)}: the option applies to sharded safetensors "
                f"checkpoints only; {index_path} is a sharded checkpoint whose shard {name!r} is "
                "not a safetensors file (a torch file?)"
            )
    return chosen, skipped


def _checking(owner: dict[str, _Shard], selected: tuple[str, ...] | None) -> _MultiAccess:
    """Access that reads every value a conversion checks (of some shards: theirs only)."""
    return _MultiAccess(owner) if selected is None else _PartAccess(owner, selected)


def read_index(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
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


def open_shards(
    index_path: Path,
    weight_map: dict[str, str],
    trust_pickle: bool,
    classes: Classes | None = None,
) -> dict[str, _Shard]:
    shards: dict[str, _Shard] = {}
    for name in dict.fromkeys(weight_map.values()):
        path = index_path.parent / name
        if not path.is_file():
            raise CheckpointError(f"{index_path}: shard {name!r} is missing")
        if safetensors_file.is_safetensors(path):
            shards[name] = _Shard(name, path, "safetensors", st=SafetensorsFile(path))
        else:
            loaded = torchfile.load(path, trust_pickle=trust_pickle, classes=classes)
            if not torchfile.is_state_dict(loaded.obj):
                raise CheckpointError(f"{path}: a shard must hold one flat state_dict")
            if loaded.zip:
                torchfile.check_zip_crc(path)
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
) -> atomic.TempFile:
    """Write and verify one upgraded shard as a temporary file (not yet committed)."""
    own = report.restricted(set(shard.keys()))
    with commit.writing(dst) as tmp:
        assert tmp.file is not None
        if shard.st is not None:
            names = list(shard.st.entries)
            job = safetensors_file.Job(
                dict.fromkeys(names, shard.st), names, shard.st.metadata, own
            )
            safetensors_file.write_job(tmp.file, job, progress)
            tmp.finish()
            safetensors_file.verify_job(tmp.path, job, progress)
        else:
            assert shard.loaded is not None
            plans: list[tuple[Location, UpgradeReport]] = [((), own)]
            upgraded = torchfile.apply(shard.loaded.obj, plans, shard.loaded.releaser)
            torchfile.save(upgraded, tmp.file, releaser=shard.loaded.releaser, progress=progress)
            tmp.finish()
            torchfile.verify(
                tmp.path,
                upgraded,
                shard.loaded.obj,
                plans,
                src_releaser=shard.loaded.releaser,
                progress=progress,
                trusted=shard.loaded.trusted,
                classes=shard.loaded.classes,
            )
        return tmp


def _shard_worker(
    path: Path, name: str, own: UpgradeReport, target: Path, trust_pickle: bool
) -> Path:
    """In a worker process: reopen one shard, write and verify its upgraded copy as a
    temporary next to ``target``; return the temporary's path (the parent commits)."""
    if safetensors_file.is_safetensors(path):
        shard = _Shard(name, path, "safetensors", st=SafetensorsFile(path))
    else:
        shard = _Shard(name, path, "torch", loaded=torchfile.load(path, trust_pickle=trust_pickle))
    try:
        tmp = _write_shard(shard, own, target, Progress(1, enabled=False))
    except NotInt8Error as err:  # its custom arguments do not survive pickling
        raise CheckpointError(f"{path}: a float weight holds {err}, not an int8 value") from None
    finally:
        if shard.st is not None:
            shard.st.close()
    return tmp.path


def _write_shards(
    req: Request,
    shards: list[_Shard],
    report: UpgradeReport,
    targets: dict[str, Path],
    progress: Progress,
) -> list[atomic.TempFile]:
    """Write and verify the upgraded shards as temporaries (nothing committed), in
    ``req.jobs`` worker processes; on any failure every temporary is removed."""
    jobs = workers.count(req.jobs, [s.path.stat().st_size for s in shards])
    temps: list[atomic.TempFile] = []
    try:
        if jobs <= 1:
            for shard in shards:
                progress.phase(shard.name[:10])
                temps.append(_write_shard(shard, report, targets[shard.name], progress))
            return temps
        if req.trust_pickle and req.classes:
            raise UsageError("--class needs --jobs 1 (classes are not passed to workers)")
        progress.phase(f"{jobs} jobs")
        calls = [
            workers.Call(
                _shard_worker,
                (
                    s.path,
                    s.name,
                    report.restricted(set(s.keys())),
                    targets[s.name],
                    req.trust_pickle,
                ),
                s.name,
                2 * s.path.stat().st_size,
            )
            for s in shards
        ]

        def adopt(call: workers.Call, path: Path) -> None:  # each call's label: its shard
            temps.append(atomic.TempFile.adopt(targets[call.label], path))

        workers.run(jobs, calls, progress, adopt)
        order = {s.name: i for i, s in enumerate(shards)}
        temps.sort(key=lambda t: order[t.dst.name])
        return temps
    except BaseException:
        for t in temps:
            t.discard()
        raise


def _dump(index: dict[str, Any]) -> bytes:
    return (json.dumps(index, indent=2) + "\n").encode()


def _new_index(index: dict[str, Any], report: UpgradeReport) -> bytes:
    out = json.loads(json.dumps(index))
    metadata = out.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("total_size"), int):
        metadata["total_size"] += sum(k.after.nbytes - k.before.nbytes for k in report.changes)
    return _dump(out)


def _part_index(
    source: Path,
    index: dict[str, Any],
    weight_map: dict[str, str],
    report: UpgradeReport,
    access: _MultiAccess,
    part: Part,
    output_dtypes: object,
) -> bytes:
    """The index of one part: the weight_map entries of its shards, ``total_size`` the
    bytes of their (upgraded) tensors, and :data:`PART_KEY` saying which shards of the
    whole checkpoint (and of which source index) it holds."""
    out = json.loads(json.dumps(index))
    chosen = set(part.selected)
    out["weight_map"] = {k: name for k, name in weight_map.items() if name in chosen}
    after = {k.key: k.after for k in report.changes}
    total = sum(after[k].nbytes if k in after else access.spec(k).nbytes for k in out["weight_map"])
    if not isinstance(out.get("metadata"), dict):
        out["metadata"] = {}
    out["metadata"]["total_size"] = total
    out["metadata"][PART_KEY] = {
        "shards": list(part.selected),
        "of": part.of,
        "patterns": list(part.patterns),
        "source_index": source.name,
        "source_index_sha256": commit.sha256(source),
        "output_dtype": request.output_dtypes_text(output_dtypes),
    }
    return _dump(out)


def convert(req: Request, source: Source, dst: Path | None) -> Result:
    index, weight_map = read_index(source.path)
    names = tuple(dict.fromkeys(weight_map.values()))
    part_of = None  # the shards to convert, if not all
    skipped: tuple[str, ...] = ()
    if req.only_shards:
        part_of, skipped = select_shards(source.path, names, req.only_shards)
    shards = open_shards(source.path, weight_map, req.trust_pickle, req.classes)
    try:
        owner = {key: shards[name] for key, name in weight_map.items()}
        chosen = shards if part_of is None else {n: shards[n] for n in part_of}
        # safetensors shards check float weights as they are written (write_job)
        all_st = all(s.st is not None for s in shards.values())
        access = _DeferredMulti(owner) if all_st and not req.dry_run else _checking(owner, part_of)
        # planned from the whole index: a layer's tensors may lie in several shards
        report = plan_state_dict(list(weight_map), access, req.output_dtypes)
        part = None
        if part_of is not None:
            part = Part(req.only_shards, part_of, skipped, len(report.groups))
            report = report.restricted({k for s in chosen.values() for k in s.keys()})
        result = Result(source.path, dst, "sharded", "", [("", report)], part=part)
        if req.dry_run:
            result.status = "would-convert" if report.changed else "up-to-date"
            return result
        assert dst is not None
        changed_keys = {k.key for k in report.changes}
        to_rewrite = [s for s in chosen.values() if changed_keys & set(s.keys())]
        total = sum(s.path.stat().st_size for s in chosen.values())
        progress = request.progress_for(req, 2 * total)
        try:
            if req.in_place:
                if not report.changed:
                    result.status = "current"
                    return result
                return _in_place(req, source, index, report, to_rewrite, progress, result)
            new_index = (
                _new_index(index, report)
                if part is None
                else _part_index(
                    source.path, index, weight_map, report, access, part, req.output_dtypes
                )
            )
            return _to_dir(
                req, source, new_index, report, chosen, to_rewrite, dst, progress, result
            )
        except (CheckpointError, NotInt8Error):
            # a float weight found not to hold int8 values while writing: re-plan with
            # every value read, which raises the full list of problems (as a dry run)
            plan_state_dict(list(weight_map), _checking(owner, part_of), req.output_dtypes)
            raise
        finally:
            progress.close()
    finally:
        for shard in shards.values():
            if shard.st is not None:
                shard.st.close()


def _in_place(
    req: Request,
    source: Source,
    index: dict[str, Any],
    report: UpgradeReport,
    to_rewrite: list[_Shard],
    progress: Progress,
    result: Result,
) -> Result:
    for path in [s.path for s in to_rewrite] + [source.path]:
        commit.check_backup_free(path)
    for path in [s.path for s in to_rewrite] + [source.path]:
        atomic.remove_stale_temps(path)
    temps: list[atomic.TempFile] = []
    try:
        targets = {s.name: s.path for s in to_rewrite}
        temps.extend(_write_shards(req, to_rewrite, report, targets, progress))
        with commit.writing(source.path) as tmp:
            assert tmp.file is not None
            tmp.file.write(_new_index(index, report))
            tmp.finish()
        temps.append(tmp)
        commit.commit_all(temps, source.path, result)  # shards first, the index last
        progress.finish()
    except BaseException:
        for t in temps:
            t.discard()
        raise
    result.status = "converted"
    result.verified = True
    return result


def _to_dir(
    req: Request,
    source: Source,
    new_index: bytes,
    report: UpgradeReport,
    shards: dict[str, _Shard],
    to_rewrite: list[_Shard],
    dst: Path,
    progress: Progress,
    result: Result,
) -> Result:
    atomic.remove_stale_temps(dst)
    staging = atomic.temp_name(dst)
    staging.mkdir()
    try:
        targets = {s.name: staging / s.name for s in to_rewrite}
        for tmp in _write_shards(req, to_rewrite, report, targets, progress):
            tmp.commit()
        for shard in shards.values():
            target = staging / shard.name
            if shard not in to_rewrite:
                progress.phase(shard.name[:10])
                with commit.writing(target) as tmp:
                    commit.copy_verified(shard.path, tmp, progress)
                    tmp.commit()
        (staging / source.path.name).write_bytes(new_index)
        with open(staging / source.path.name, "rb+") as f:
            os.fsync(f.fileno())
        atomic.fsync_dir(staging)
        atomic.rename_into_place(staging, dst)  # dst: empty (checked when resolving)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress.finish()
    result.written = [dst / s.name for s in shards.values()] + [dst / source.path.name]
    result.status = "converted" if report.changed else "current"
    result.verified = True
    return result


def merge(source: Source, dst: Path, parts: list[Path]) -> list[Path]:
    """Put the parts of an ``--only-shards`` conversion of the sharded checkpoint
    ``source`` together into the new directory ``dst`` (staged beside it, then renamed:
    all or nothing): every part must come from this source index, and together they must
    hold every shard exactly once. The shards are hard-linked (copied across file
    systems); the index is the source's, with ``total_size`` the sum of the parts'."""
    index, weight_map = read_index(source.path)
    digest = commit.sha256(source.path)
    holders = request.Holders(source.path, "shard", "shards")
    total = 0
    for part in parts:
        part_index = part / source.path.name
        try:
            metadata = json.loads(part_index.read_text())["metadata"]
            record, size = metadata[PART_KEY], int(metadata["total_size"])
            shards = [str(name) for name in record["shards"]]
        except FileNotFoundError:
            raise CheckpointError(
                f"{part_index}: missing; {part} is not a part written by python -m compat "
                f"upgrade --only-shards from {source.path}"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{part_index}: not the index of a part ({type(err).__name__}: {err})"
            ) from None
        if record.get("source_index_sha256") != digest:
            raise CheckpointError(
                f"{part}: a part of another checkpoint, not of {source.path} (the index differs)"
            )
        holders.same_options(part, record.get("output_dtype"))
        holders.add(part, shards)
        total += size
    wanted = list(dict.fromkeys(weight_map.values()))
    holders.check(wanted)
    out = json.loads(json.dumps(index))
    if not isinstance(out.get("metadata"), dict):
        out["metadata"] = {}
    out["metadata"]["total_size"] = total
    links = [(holders.home[name] / name, name) for name in wanted]
    atomic.assemble_directory(dst, links, {source.path.name: _dump(out)})
    return [dst / name for name in wanted] + [dst / source.path.name]


def _not_a_part(index_path: Path) -> Path:
    """``index_path``, unless its metadata says it is the index of one part."""
    try:
        metadata = json.loads(index_path.read_text()).get("metadata")
    except (OSError, ValueError, AttributeError):
        return index_path  # read_index reports what is wrong with it
    if isinstance(metadata, dict) and PART_KEY in metadata:
        request.refuse_part(index_path.parent, index_path)
    return index_path


class ShardedFormat(files.FileFormat):
    """A directory holding one ``*.index.json``, or that index file itself."""

    name = "sharded"
    run = staticmethod(convert)
    merge_parts = staticmethod(merge)

    def detect(self, path: Path) -> Path | None:
        if path.is_dir():
            indexes = sorted(path.glob("*.index.json"))
            if len(indexes) != 1:
                found = ", ".join(p.name for p in indexes) or "none"
                raise UsageError(
                    f"{path}: a directory source must hold exactly one Hugging Face *.index.json "
                    f"(found: {found}); pass the index file or a single checkpoint file instead"
                )
            return _not_a_part(indexes[0])
        return _not_a_part(path) if path.name.endswith(".index.json") else None

    def open(
        self, path: Path, *, trust_pickle: bool, classes: Classes | None = None
    ) -> files.Opened:
        _index, weight_map = read_index(path)
        shards = open_shards(path, weight_map, trust_pickle, classes)
        owner = {key: shards[name] for key, name in weight_map.items()}

        def close() -> None:
            for shard in shards.values():
                if shard.st is not None:
                    shard.st.close()

        return files.Opened(list(weight_map), _MultiAccess(owner), close)


FORMAT: ShardedFormat = ShardedFormat()
