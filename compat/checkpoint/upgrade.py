"""``compat.upgrade_state_dict`` and ``compat.upgrade_report``: whole-model state_dicts.

A quant linear is found by prefix: a leaf group of keys ``<prefix>weight`` (2-D) and
``<prefix>scale`` (1-D) whose other direct keys are among ``offset``, ``pertoken_scale``
and ``bias``. A group counts as a quant linear when something in it says so (an int8 or
int32 weight, an int64 scale, an int32 bias, an ``offset`` or ``pertoken_scale`` key, or
a float scale holding a destroyed int64 param) or when ``output_dtypes`` names it; a
float weight with a float scale and nothing else is ambiguous (it may be a float layer
that happens to use these names) and is reported as skipped, never changed.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from compat.formats.errors import CheckpointError
from compat.formats.loading import FORMAT_VERSION
from compat.formats.rules import (
    FLOAT_WEIGHT_DTYPES,
    NAMES,
    Access,
    Context,
    DictAccess,
    GroupPlan,
    KeyChange,
    apply,
    destroyed_index,
    plan_group,
)
from compat.ops.checks import dtype_name
from compat.ops.output_dtype import parse_output_dtype

OutputDtypes = Mapping[str, "torch.dtype | None"] | torch.dtype | None


@dataclass(frozen=True)
class UpgradeReport:
    """What :func:`upgrade_state_dict` does to a state_dict, per key, and why."""

    groups: tuple[GroupPlan, ...]
    skipped: tuple[tuple[str, str], ...]
    other_keys: int

    @property
    def changed(self) -> bool:
        """Whether upgrading changes anything (False: already current)."""
        return any(g.changed for g in self.groups)

    @property
    def changes(self) -> tuple[KeyChange, ...]:
        """The keys whose tensor is transformed."""
        return tuple(k for g in self.groups for k in g.keys if k.changed)

    def restricted(self, keys: Collection[str]) -> UpgradeReport:
        """The part of this report about ``keys`` (e.g. some shards' tensors): the groups
        with a key among them, holding only those keys (the names of the others in
        ``elsewhere``); skipped groups whose weight or scale is among them; the other keys
        among them."""
        groups = []
        for g in self.groups:
            mine = tuple(k for k in g.keys if k.key in keys)
            if mine:
                elsewhere = tuple(k.name for k in g.keys if k.key not in keys)
                groups.append(dataclasses.replace(g, keys=mine, elsewhere=elsewhere))
        skipped = tuple(
            (module, reason)
            for module, reason in self.skipped
            if any((f"{module}.{n}" if module else n) in keys for n in ("weight", "scale"))
        )
        covered = sum(len(g.keys) for g in groups)
        return UpgradeReport(tuple(groups), skipped, len(keys) - covered)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (``python -m compat upgrade --json``)."""
        return {
            "changed": self.changed,
            "quant_layers": len(self.groups),
            "other_keys": self.other_keys,
            "groups": [g.to_dict() for g in self.groups],
            "skipped": [{"module": p, "reason": r} for p, r in self.skipped],
        }

    def __str__(self) -> str:
        return self.details()

    def details(self) -> str:
        """Every layer, every key, what happens to it and why."""
        lines = [self._headline()]
        for g in self.groups:
            lines.append(
                f"  {g.module or '<root>'} [{'+'.join(g.formats) or '-'}] "
                f"output_dtype={g.output_dtype}{_dtype_note(g)}"
            )
            for k in g.keys:
                if k.changed:
                    lines.append(f"    {k.name}: {k.before} -> {k.after}  {k.action}: {k.reason}")
                else:
                    lines.append(
                        f"    {k.name}: {k.before}  unchanged"
                        + (f" ({k.reason})" if k.reason else "")
                    )
            if g.elsewhere:
                lines.append(f"    in other parts: {', '.join(g.elsewhere)}")
            lines.extend(f"    note: {note}" for note in g.notes)
        lines.extend(f"  skipped {p or '<root>'}: {r}" for p, r in self.skipped)
        return "\n".join(lines)

    def summary(self) -> str:
        """A few lines whatever the model's size: the layers grouped by what happens."""
        lines = [self._headline()]
        buckets: dict[tuple[str, str], int] = {}
        for g in self.groups:
            what = "; ".join(
                f"{k.name} {_short(k.before.dtype)} -> {_short(k.after.dtype)} {k.action}"
                for k in g.keys
                if k.changed
            )
            if not what and g.elsewhere:  # its other keys are another part's to convert
                what = "need nothing here (their other tensors are other parts' to convert)"
            key = ("+".join(g.formats) or "-", what)
            buckets[key] = buckets.get(key, 0) + 1
        width = len(str(max(buckets.values(), default=0)))
        for (formats, what), count in buckets.items():
            lines.append(
                f"  {count:>{width}} {_layers(count)} [{formats}]: {what or 'need nothing'}"
            )
        if self.groups and all(what for _f, what in buckets):
            lines.append(f"  {0:>{width}} layers: need nothing")
        sources: dict[str, int] = {}
        for g in self.groups:
            label = (
                f"{g.output_dtype} inferred ({g.output_dtype_reason})"
                if g.output_dtype_source == "inferred"
                else g.output_dtype
                if g.output_dtype_source == "given"
                else "unknown"
            )
            sources[label] = sources.get(label, 0) + 1
        if sources:
            lines.append(
                "  output_dtype: " + "; ".join(f"{n} {label}" for label, n in sources.items())
            )
        notes = sum(len(g.notes) for g in self.groups)
        if notes:
            lines.append(f"  {notes} note(s); -v shows them with each layer")
        if self.skipped:
            shown = ", ".join(p or "<root>" for p, _r in self.skipped[:3])
            more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            lines.append(
                f"  skipped {len(self.skipped)} float group(s) that may not be quantized linears "
                f"({shown}{more}); -v says why"
            )
        return "\n".join(lines)

    def _headline(self) -> str:
        if not self.groups:
            return (
                f"0 quantized linear layers found ({self.other_keys} other key(s)): is this the "
                "checkpoint of a model with LinearA8W8Quant/LinearQuant layers?"
            )
        changed = sum(1 for g in self.groups if g.changed)
        return (
            f"{len(self.groups)} quantized linear {_layers(len(self.groups))}, {changed} to "
            f"upgrade, {len(self.changes)} tensor(s) transformed; {self.other_keys} other "
            "key(s) untouched"
        )


def _layers(count: int) -> str:
    return "layer" if count == 1 else "layers"


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_note(g: GroupPlan) -> str:
    if g.output_dtype_source == "inferred":
        return f" (inferred: {g.output_dtype_reason})"
    return f" ({g.output_dtype_reason})" if g.output_dtype_reason else ""


# --------------------------------------------------------------------------- arguments
def _check_output_dtype(where: str, value: object) -> torch.dtype:
    # a module's output_dtype=None means int8; any other non-dtype is a ValueError here
    dtype = parse_output_dtype(
        value, func="upgrade_state_dict", param=where, none=torch.int8, wrong_type=ValueError
    )
    assert dtype is not None
    return dtype


def normalize_output_dtypes(
    output_dtypes: object,
) -> tuple[torch.dtype | None, dict[str, torch.dtype]]:
    """``(default for every group or None, {module name: dtype})``."""
    if output_dtypes is None:
        return None, {}
    if isinstance(output_dtypes, torch.dtype):
        return _check_output_dtype("argument 'output_dtypes'", output_dtypes), {}
    if not isinstance(output_dtypes, Mapping):
        raise TypeError(
            "upgrade_state_dict: argument 'output_dtypes' must be None, a torch.dtype or a "
            f"mapping module name -> dtype, got {type(output_dtypes).__name__}"
        )
    per: dict[str, torch.dtype] = {}
    for name, value in output_dtypes.items():
        if not isinstance(name, str):
            raise TypeError(
                f"upgrade_state_dict: output_dtypes keys must be module names (str), got {name!r}"
            )
        per[name.rstrip(".")] = _check_output_dtype(f"output_dtypes[{name!r}]", value)
    return None, per


# --------------------------------------------------------------------------- discovery
def _split(key: str) -> tuple[str, str]:
    head, dot, name = key.rpartition(".")
    return head + dot, name


def candidate_groups(keys: Iterable[str]) -> tuple[dict[str, dict[str, str]], int]:
    """Leaf groups holding a ``weight`` and a ``scale`` and nothing but NAMES.

    Returns ``({prefix: {name: key}}, number of keys outside every candidate)``.
    """
    by_prefix: dict[str, dict[str, str]] = {}
    parents: set[str] = set()
    total = 0
    for key in keys:
        total += 1
        prefix, name = _split(key)
        by_prefix.setdefault(prefix, {})[name] = key
        ancestor = prefix
        while ancestor:  # "a.b." has ancestors "a." and "" (the root)
            ancestor = _split(ancestor[:-1])[0]
            parents.add(ancestor)
    groups: dict[str, dict[str, str]] = {}
    for prefix, names in by_prefix.items():
        if prefix in parents or "weight" not in names or "scale" not in names:
            continue
        if not set(names) <= set(NAMES):
            continue
        groups[prefix] = {n: names[n] for n in NAMES if n in names}
    covered = sum(len(g) for g in groups.values())
    return groups, total - covered


def _shaped_like(names: Mapping[str, str], access: Access) -> bool:
    """A 2-D weight and a 1-D scale, as every quant linear has."""
    return (
        len(access.spec(names["weight"]).shape) == 2 and len(access.spec(names["scale"]).shape) == 1
    )


def _evidence(names: Mapping[str, str], access: Access) -> bool:
    """Something only a quant linear holds (its shapes are then checked, not assumed)."""
    if not _shaped_like(names, access):
        return False  # e.g. another library's layer with (n, 1) scales: not ours to judge
    weight = access.spec(names["weight"])
    scale = access.spec(names["scale"])
    if weight.dtype in (torch.int8, torch.int32) or scale.dtype == torch.int64:
        return True
    if "offset" in names or "pertoken_scale" in names:
        return True
    if "bias" in names and access.spec(names["bias"]).dtype == torch.int32:
        return True
    if scale.dtype.is_floating_point and not access.is_meta(names["scale"]):
        return destroyed_index(access.tensor(names["scale"])) is not None
    return False


# --------------------------------------------------------------------------- planning
def plan_state_dict(
    keys: Iterable[str],
    access: Access,
    output_dtypes: object = None,
    *,
    modules: Mapping[str, Context] | None = None,
) -> UpgradeReport:
    """Plan the upgrade of a whole state_dict; raise one :class:`CheckpointError` for all problems.

    ``modules`` maps module names to a known :class:`Context` (from module objects, e.g.
    an unpickled model); they take precedence over ``output_dtypes``.
    """
    default, per = normalize_output_dtypes(output_dtypes)
    known = dict(modules or {})
    key_list = [k for k in keys if isinstance(k, str)]
    groups, other = candidate_groups(key_list)
    names_found = {p.rstrip("."): p for p in groups}
    unknown = sorted(set(per) - set(names_found))
    if unknown:
        listed = ", ".join(repr(n) for n in sorted(names_found)) or "none"
        raise ValueError(
            f"upgrade_state_dict: output_dtypes names {', '.join(map(repr, unknown))}, which is "
            f"not a quant linear in this state_dict; modules with weight and scale keys: {listed}"
        )
    problems: list[str] = []
    plans: list[GroupPlan] = []
    skipped: list[tuple[str, str]] = []
    for prefix, names in groups.items():
        module = prefix.rstrip(".")
        ctx = known.get(module)
        if ctx is None:
            out = per.get(module, default)
            declared = module in per
            ctx = Context(output_dtype=out)
        else:
            declared = True
        if not declared and not _evidence(names, access):
            other += len(names)
            weight = access.spec(names["weight"])
            if weight.dtype in FLOAT_WEIGHT_DTYPES and _shaped_like(names, access):
                skipped.append(
                    (
                        module,
                        f"float weight ({dtype_name(weight.dtype)}) and float scale without an "
                        "int32 bias, offset or int64 scale: possibly a float layer, so it was "
                        "left alone; if it is a quant linear (F4, bias=False), name it in "
                        f"output_dtypes (CLI: --output-dtype {module or '<root>'}=DTYPE)",
                    )
                )
            continue
        plans.append(plan_group(prefix, names, access, ctx, problems))
    if problems:
        raise CheckpointError(problems)
    return UpgradeReport(tuple(plans), tuple(skipped), other)


def _tensor_keys(state_dict: Mapping[Any, Any]) -> list[str]:
    return [k for k, v in state_dict.items() if isinstance(k, str) and isinstance(v, torch.Tensor)]


def _check_mapping(state_dict: object) -> Mapping[Any, Any]:
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            "argument 'state_dict' must be a mapping of names to tensors, got "
            f"{type(state_dict).__name__}"
        )
    return state_dict


def upgrade_report(
    state_dict: Mapping[str, Any], *, output_dtypes: OutputDtypes = None
) -> UpgradeReport:
    """List, per key, what :func:`upgrade_state_dict` would change and why.

    Raises :class:`CheckpointError` (naming every unrecoverable key) exactly when
    :func:`upgrade_state_dict` would. Reads values where the decision depends on them
    (float weights, scales, offsets); never modifies anything.
    """
    sd = _check_mapping(state_dict)
    return plan_state_dict(_tensor_keys(sd), DictAccess(sd, keep_results=False), output_dtypes)


def apply_report(
    state_dict: Mapping[Any, Any],
    report: UpgradeReport,
    release: Callable[[torch.Tensor], None] | None = None,
) -> dict[Any, Any]:
    """A new state_dict with the report's transformations applied (input untouched).

    ``release`` is called on each transformed source tensor once it has been read.
    """
    by_key = {k.key: k for g in report.groups for k in g.keys if k.changed}
    out: OrderedDict[Any, Any] = OrderedDict()
    for key, value in state_dict.items():
        change = by_key.get(key)
        if change is None:
            out[key] = value
            continue
        out[key] = apply(change, value)
        if release is not None:
            release(value)
    metadata = getattr(state_dict, "_metadata", None)
    if isinstance(metadata, Mapping):
        new_meta = copy.deepcopy(dict(metadata))
        for g in report.groups:
            entry = new_meta.setdefault(g.module, {})
            if isinstance(entry, dict):
                entry["version"] = FORMAT_VERSION
        out._metadata = OrderedDict(new_meta)  # type: ignore[attr-defined]
    return out


def upgrade_state_dict(
    state_dict: Mapping[str, Any], *, output_dtypes: OutputDtypes = None
) -> dict[str, Any]:
    """Return ``state_dict`` upgraded to the current format; the input is not modified.

    Finds every quant linear by prefix (whole-model state_dicts work) and upgrades the
    legacy formats F1-F4 (see docs/checkpoints.md). ``output_dtypes`` tells the output
    dtype of the modules, which a state_dict does not record: a dtype for all of them or
    ``{module name: dtype}`` (``None`` = int8). It matters only for torchair's int64
    scales (F2), which are kept unless the output needs a float scale (bfloat16, int32 or
    pertoken): then they are decoded exactly. Unchanged tensors are shared, not copied;
    ``_metadata`` is carried over with the upgraded modules' version set. Idempotent.
    Raises :class:`CheckpointError` for anything illegal or unrecoverable.
    """
    sd = _check_mapping(state_dict)
    report = plan_state_dict(_tensor_keys(sd), DictAccess(sd), output_dtypes)
    return apply_report(sd, report)
