"""What a quant-linear checkpoint entry may hold, and how legacy entries are upgraded.

One group of keys (``<prefix>weight``, ``scale``, ``offset``, ``pertoken_scale``,
``bias``) is judged at a time, from the keys, dtypes, shapes and values alone: the
PyTorch ``_metadata`` version is lost whenever a state_dict is rebuilt or goes through
safetensors, so it is never trusted. Formats (docs/checkpoints.md):

* F1 plain upstream state_dict (float scale); current, nothing to change. Reported only
  for a group in which no legacy format (F2-F4) was found.
* F2 torchair ``use_internal_format_weight``: int64 scale with the offset folded in (spec
  §4). Kept where the output dtype accepts int64, decoded exactly (docs/ops.md §1.5) where a
  float scale is needed (bfloat16/int32 output, pertoken).
* F3 per-tensor scale/offset of shape ``(1,)``; legal as is.
* F4 re-saved after a plain load into upstream's float32 parameters (docs/ops.md §3.4): a float
  weight holding integers is restored to int8 once every value is checked; a float
  scale in ``[2**46, 2**47]`` is a destroyed int64 quant param and is refused.

Everything else that is not legal raises :class:`CheckpointError`; nothing is cast
silently. The transformations themselves (:func:`apply`, :func:`transform_chunk`) are
element-wise so that the file converter can stream them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from compat.ops.checks import allowed, dtype_name, shape_text
from compat.ops.encoding import decode, decode_quant_param
from compat.ops.schemes import (
    A8W8,
    SCHEMES,
    Row,
    Scheme,
    dtypes_for,
    scheme_of,
    storage_dtypes,
)

NAMES = ("weight", "scale", "offset", "pertoken_scale", "bias")

_I8, _I32, _I64 = torch.int8, torch.int32, torch.int64
_F16, _BF16, _F32, _F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64


# dtypes legal for some module, derived from the schemes; the module's output dtype and
# scheme narrow them (plan_group).
LEGAL: dict[str, tuple[torch.dtype, ...]] = {
    "weight": storage_dtypes(),
    "scale": dtypes_for("scale"),
    "offset": dtypes_for("offset"),
    "pertoken_scale": (_F32,),
    "bias": dtypes_for("bias"),
}
FLOAT_WEIGHT_DTYPES = (_F16, _BF16, _F32, _F64)

# actions
KEEP, RESTORE, DECODE = "unchanged", "restored", "decoded"

# an int64 quant param lies in [2**46, 2**47); cast to a float it rounds into [2**46, 2**47]
_Q_LOW, _Q_HIGH = float(2**46), float(2**47)
CHUNK_ELEMENTS = 1 << 21  # 8 MiB of float32: buffers are reused, so this bounds the memory


@dataclass(frozen=True)
class Spec:
    """dtype and shape of one tensor (all the planner needs before reading values)."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def __str__(self) -> str:
        return f"{dtype_name(self.dtype)} {shape_text(self.shape)}"

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": dtype_name(self.dtype), "shape": list(self.shape)}

    @classmethod
    def of(cls, tensor: torch.Tensor) -> Spec:
        return cls(tensor.dtype, tuple(tensor.shape))


class Access(Protocol):
    """Read access to the tensors of a state_dict (in memory, mmap or a lazy file)."""

    def spec(self, key: str) -> Spec: ...

    def tensor(self, key: str) -> torch.Tensor: ...

    def chunks(self, key: str) -> Iterator[torch.Tensor]: ...

    def is_meta(self, key: str) -> bool: ...


class DictAccess:
    """:class:`Access` over a mapping of tensors."""

    def __init__(
        self,
        mapping: Mapping[str, Any],
        release: Callable[[torch.Tensor], None] | None = None,
        *,
        keep_results: bool = True,
    ) -> None:
        self._mapping = mapping
        self._release = release  # called on each chunk once read (mmap'd sources)
        # restored weights are computed once while planning and reused by apply(); a
        # report that is never applied need not keep them
        self.keep_results = keep_results

    def spec(self, key: str) -> Spec:
        return Spec.of(self._mapping[key])

    def tensor(self, key: str) -> torch.Tensor:
        value: torch.Tensor = self._mapping[key]
        return value

    def chunks(self, key: str) -> Iterator[torch.Tensor]:
        flat = self._mapping[key].reshape(-1)
        for start in range(0, flat.numel(), CHUNK_ELEMENTS):
            chunk = flat[start : start + CHUNK_ELEMENTS]
            yield chunk
            if self._release is not None:
                self._release(chunk)

    def is_meta(self, key: str) -> bool:
        return bool(self._mapping[key].device.type == "meta")


@dataclass(frozen=True)
class Context:
    """What is known about the module a group belongs to.

    ``output_dtype`` None means unknown (a state_dict alone does not record it); a
    module's ``output_dtype=None`` is passed as ``torch.int8``. ``pertoken`` None means:
    infer from the presence of the ``pertoken_scale`` key. ``scheme`` is the module's
    current scheme (from its weight dtype), used when the checkpoint has no weight.
    """

    output_dtype: torch.dtype | None = None
    pertoken: bool | None = None
    out_features: int | None = None
    in_features: int | None = None
    scheme: Scheme = A8W8


@dataclass(frozen=True)
class KeyChange:
    """What upgrading does to one key, and why."""

    key: str
    name: str
    action: str
    before: Spec
    after: Spec
    reason: str
    # the transformed tensor when planning already computed (and checked) it
    result: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @property
    def changed(self) -> bool:
        return self.action != KEEP

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "action": self.action,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class GroupPlan:
    """The upgrade of one quant linear's keys."""

    prefix: str
    formats: tuple[str, ...]
    output_dtype: str
    keys: tuple[KeyChange, ...]
    notes: tuple[str, ...]
    #: where ``output_dtype`` comes from: "given" (the module or ``output_dtypes``),
    #: "inferred" (the checkpoint's dtypes imply it), or "unknown"
    output_dtype_source: str = "unknown"
    #: why it was inferred, or which output dtypes remain possible
    output_dtype_reason: str = ""
    #: of a report about some of the checkpoint's tensors (one part of a conversion in
    #: parts): the names of this layer's keys that lie outside it (handled by other parts)
    elsewhere: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return self.prefix[:-1] if self.prefix.endswith(".") else self.prefix

    @property
    def changed(self) -> bool:
        return any(k.changed for k in self.keys)

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "formats": list(self.formats),
            "output_dtype": self.output_dtype,
            "output_dtype_source": self.output_dtype_source,
            "output_dtype_reason": self.output_dtype_reason,
            "changed": self.changed,
            "keys": [k.to_dict() for k in self.keys],
            "notes": list(self.notes),
            "elsewhere": list(self.elsewhere),
        }


# --------------------------------------------------------------------------- legality
def _dtypes(values: tuple[torch.dtype | None, ...]) -> tuple[torch.dtype, ...]:
    return tuple(v for v in values if v is not None)


def _outputs_text(scheme: Scheme, *, with_offset: bool = False) -> str:
    """The output dtypes quant_matmul supports for ``scheme``, from its dtype rows;
    ``with_offset``: only those whose row takes an offset."""
    modes: dict[torch.dtype, set[bool]] = {}
    for (out, pertoken), row in scheme.rows.items():
        if not with_offset or _dtypes(row["offset"]):
            modes.setdefault(out, set()).add(pertoken)
    words = {
        frozenset({False}): "without pertoken_scale",
        frozenset({True}): "with pertoken_scale",
        frozenset({False, True}): "with or without pertoken_scale",
    }
    return ", ".join(f"{dtype_name(out)} ({words[frozenset(p)]})" for out, p in modes.items())


def _unravel(index: int, shape: tuple[int, ...]) -> list[int]:
    out = []
    for dim in reversed(shape):
        out.append(index % dim if dim else 0)
        index = index // dim if dim else 0
    return out[::-1]


class NotInt8Error(ValueError):
    """A float weight value that is not an integer in [-128, 127]."""

    def __init__(self, index: int, value: float) -> None:
        super().__init__(f"value {value!r} at flat index {index}")
        self.index = index
        self.value = value


def restored_chunks(
    chunks: Iterable[torch.Tensor], out: torch.Tensor | None = None
) -> Iterator[torch.Tensor]:
    """int8 copies of flat float chunks, each checked to survive the int8 -> float round
    trip, i.e. to hold only integers in [-128, 127] (NaN, fractions and out-of-range values
    do not); raises :class:`NotInt8Error` at the first that does not.

    ``out``: a flat int8 tensor receiving the whole result; otherwise the chunks share one
    reused buffer (each valid until the next is requested). Scratch memory: one chunk.
    """
    start = 0
    back_buf: torch.Tensor | None = None
    own: torch.Tensor | None = None
    for chunk in chunks:
        n = chunk.numel()
        if back_buf is None:
            back_buf = torch.empty(n, dtype=chunk.dtype, device=chunk.device)
            if out is None:
                own = torch.empty(n, dtype=_I8, device=chunk.device)
        target = out if out is not None else own
        assert target is not None
        piece = (target[start : start + n] if out is not None else target[:n]).copy_(chunk)
        back = back_buf[:n].copy_(piece)
        if not torch.equal(back, chunk):
            bad = int((back != chunk).nonzero()[0, 0])
            raise NotInt8Error(start + bad, float(chunk[bad]))
        yield piece
        start += n


def _restore_int8(
    access: Access, key: str, spec: Spec
) -> tuple[tuple[int, float] | None, torch.Tensor | None]:
    """Check (and, where ``access.keep_results``, keep) the int8 image of a float weight:
    ``(first bad (flat index, value) or None, the int8 tensor or None)``."""
    keep = bool(getattr(access, "keep_results", False))
    out = None
    if keep:
        out = torch.empty(spec.numel, dtype=_I8, device=access.tensor(key).device)
    try:
        for _ in restored_chunks(access.chunks(key), out):
            pass
    except NotInt8Error as err:
        return (err.index, err.value), None
    return None, None if out is None else out.reshape(spec.shape)


def destroyed_index(values: torch.Tensor) -> int | None:
    hit = (values >= _Q_LOW) & (values <= _Q_HIGH)
    if bool(hit.any()):
        return int(hit.reshape(-1).nonzero()[0, 0])
    return None


def _nan_index(values: torch.Tensor) -> int | None:
    nan = torch.isnan(values.reshape(-1))
    if bool(nan.any()):
        return int(nan.nonzero()[0, 0])
    return None


def _value_text(values: torch.Tensor, index: int) -> str:
    return repr(float(values.reshape(-1)[index]))


_HALF_HINT = (
    " (a float16/bfloat16 copy of a float32 parameter usually comes from model.half() or "
    ".to(torch.bfloat16) after a plain load into upstream's module; the float32 values are lost: "
    "re-export from the original checkpoint)"
)


class _Group:
    """Planning state of one group (collects problems instead of raising)."""

    def __init__(
        self,
        prefix: str,
        keys: Mapping[str, str],
        access: Access,
        ctx: Context,
        problems: list[str],
    ) -> None:
        self.prefix = prefix
        self.keys = keys
        self.access = access
        self.ctx = ctx
        self.problems = problems
        self.specs = {name: access.spec(key) for name, key in keys.items()}
        self.changes: dict[str, KeyChange] = {}
        self.notes: list[str] = []
        self.formats: set[str] = set()

    # helpers
    def problem(self, name: str, text: str) -> None:
        self.problems.append(f"{self.keys[name]!r}: {text}")

    def keep(self, name: str, reason: str = "") -> None:
        spec = self.specs[name]
        self.changes[name] = KeyChange(self.keys[name], name, KEEP, spec, spec, reason)

    def change(
        self, name: str, action: str, after: Spec, reason: str, result: torch.Tensor | None = None
    ) -> None:
        self.changes[name] = KeyChange(
            self.keys[name], name, action, self.specs[name], after, reason, result
        )

    def values(self, name: str) -> torch.Tensor | None:
        """Small tensors only (scale, offset); None on the meta device."""
        if self.access.is_meta(self.keys[name]):
            return None
        return self.access.tensor(self.keys[name])

    def defers(self, key: str) -> bool:
        """Whether the float weight ``key`` is checked later, not while planning: an access
        with ``defer_weight_checks`` checks every float weight while writing it (streaming
        conversion); one with ``defers_weight_check(key)`` decides per key (a conversion
        of some shards checks the weights of those shards only)."""
        per_key = getattr(self.access, "defers_weight_check", None)
        if per_key is not None:
            return bool(per_key(key))
        return bool(getattr(self.access, "defer_weight_checks", False))

    def has_nan(self, name: str, values: torch.Tensor) -> bool:
        """Report a NaN in a scale or offset (never a usable value); True if found."""
        nan = _nan_index(values)
        if nan is not None:
            self.problem(
                name,
                f"{dtype_name(values.dtype)} {name} holds NaN at index {nan}; it must be a number",
            )
        return nan is not None

    def check_dtype(self, name: str, legal: tuple[torch.dtype, ...], context: str = "") -> bool:
        spec = self.specs[name]
        if spec.dtype in legal:
            return True
        hint = (
            _HALF_HINT
            if spec.dtype in (_F16, _BF16) and name in ("scale", "offset", "pertoken_scale")
            else ""
        )
        where = f" {context}" if context else ""
        self.problem(
            name,
            f"dtype {dtype_name(spec.dtype)} (shape {shape_text(spec.shape)}) is not "
            f"allowed{where}; allowed: {allowed(legal)}{hint}",
        )
        return False

    def check_vector(self, name: str, n: int | None, *, per_tensor: bool) -> None:
        shape = self.specs[name].shape
        if per_tensor:
            ok = len(shape) == 1 and (shape[0] == 1 or n is None or shape[0] == n)
            want = "(1,) or (n,)" + (f" = ({n},)" if n is not None else "")
        elif name == "pertoken_scale":
            ok, want = len(shape) == 1, "1-D (m,) or upstream's (out_features,)"
        else:
            ok = len(shape) == 1 and (n is None or shape[0] == n)
            want = "(n,)" + (f" = ({n},)" if n is not None else "")
        if not ok:
            self.problem(
                name,
                f"shape {shape_text(shape)} ({dtype_name(self.specs[name].dtype)}) is not allowed; "
                f"allowed: {want}",
            )
        elif per_tensor and shape == (1,) and n not in (None, 1):
            self.formats.add("F3")


def _out_features(g: _Group) -> int | None:
    if g.ctx.out_features is not None:
        return g.ctx.out_features
    weight = g.specs.get("weight")
    if weight is not None and len(weight.shape) == 2:
        return weight.shape[0]
    return None


def _plan_weight(g: _Group) -> torch.dtype | None:
    """Check the weight; return its dtype after the upgrade (None if absent/illegal)."""
    spec = g.specs.get("weight")
    if spec is None:
        return None
    want = (g.ctx.out_features, g.ctx.in_features)
    if len(spec.shape) != 2 or (want[0] is not None and spec.shape != want):
        expected = (
            f"({want[0]}, {want[1]}) = (out_features, in_features)"
            if want[0] is not None
            else "2-D (out_features, in_features)"
        )
        g.problem(
            "weight",
            f"shape {shape_text(spec.shape)} ({dtype_name(spec.dtype)}) is not allowed; allowed: "
            f"{expected}",
        )
        return None
    if spec.dtype in LEGAL["weight"]:
        g.keep("weight")
        return spec.dtype
    if spec.dtype not in FLOAT_WEIGHT_DTYPES:
        kinds = "; ".join(f"{dtype_name(s.storage_dtype)} for {s.name}" for s in SCHEMES)
        g.check_dtype("weight", LEGAL["weight"], f"({kinds})")
        return None
    # F4: a float weight is legal only as the float image of an int8 weight.
    key = g.keys["weight"]
    if g.access.is_meta(key):
        g.problem(
            "weight",
            f"dtype {dtype_name(spec.dtype)} on the meta device: its values cannot be checked, so "
            "it cannot be restored to int8",
        )
        return None
    bad, restored = (None, None) if g.defers(key) else _restore_int8(g.access, key, spec)
    if bad is not None:
        index, value = bad
        g.problem(
            "weight",
            f"dtype {dtype_name(spec.dtype)} holds {value!r} at index "
            f"{_unravel(index, spec.shape)}, which is not an integer in [-128, 127]: it is not the "
            "float image of an int8 weight (legacy F4) and cannot be restored; allowed: "
            "torch.int8, torch.int32 (A4W4), or a float tensor holding only integers in [-128, "
            "127]. An A4W4 int32 weight that went through float32 has lost bits: re-export it",
        )
        return None
    g.formats.add("F4")
    g.change(
        "weight",
        RESTORE,
        Spec(_I8, spec.shape),
        f"{dtype_name(spec.dtype)} weight holding only integers in [-128, 127] (re-saved after a "
        "plain load into upstream's float32 parameter, F4): restored to torch.int8, every value "
        "checked",
        result=restored,
    )
    return _I8


def _context(out: torch.dtype | None, row: object, pertoken: bool) -> str:
    if row is None or out is None:
        return ""
    return f"for output_dtype={dtype_name(out)}" + (" with pertoken_scale" if pertoken else "")


def _plan_scale(g: _Group, n: int | None, row: Row | None, pertoken: bool) -> None:
    spec = g.specs.get("scale")
    if spec is None:
        return
    g.check_vector("scale", n, per_tensor=True)
    out = g.ctx.output_dtype
    if spec.dtype == _I64:
        g.formats.add("F2")
        values = g.values("scale")
        if values is not None:
            try:
                decode_quant_param(values)
            except ValueError as err:
                g.problem("scale", f"int64 scale is not an npu_trans_quant_param result ({err})")
                return
        needs_float = (row is not None and _I64 not in row["scale"]) or (
            row is None and out is None and pertoken
        )
        if not needs_float:
            legal_for = (
                f"output_dtype={dtype_name(out)}"
                if out is not None
                else "int8/float16 output (the output dtype is not recorded in a state_dict)"
            )
            g.keep(
                "scale",
                f"int64 quant param (torchair, F2) kept: legal for {legal_for}; the hardware reads "
                "the scale from bits 13-31 and the offset from bits 37-45",
            )
            return
        why = "pertoken_scale" if pertoken else f"output_dtype={dtype_name(out)}"
        if values is not None:
            _scale, offset = decode(values)
            nonzero = offset.reshape(-1) != 0
            if bool(nonzero.any()):
                i = int(nonzero.nonzero()[0, 0])
                g.problem(
                    "scale",
                    f"int64 quant param folds offset {int(offset.reshape(-1)[i])} (index {i}) into "
                    f"bits 37-45, but {why} needs a float scale and allows no offset: decoding it "
                    "would drop the offset; allowed here: "
                    f"{allowed(_dtypes(row['scale']) if row else (_F32,))}",
                )
                return
        g.change(
            "scale",
            DECODE,
            Spec(_F32, spec.shape),
            "int64 quant param (torchair, F2) decoded exactly to its float32 scale (bits 13-31, "
            f"docs/ops.md §1.5; the folded offset is 0): {why} needs a float scale",
        )
        return
    legal = _dtypes(row["scale"]) if row is not None else LEGAL["scale"]
    float_legal = tuple(d for d in legal if d != _I64)
    if spec.dtype.is_floating_point:
        values = g.values("scale")
        if values is not None:
            hit = destroyed_index(values)
            if hit is not None:
                g.problem(
                    "scale",
                    f"{dtype_name(spec.dtype)} scale holds {_value_text(values, hit)} at index "
                    f"{hit}, in [2**46, 2**47]: this is an int64 quant param "
                    "(npu_trans_quant_param / torchair use_internal_format_weight) destroyed by a "
                    "float cast, typically a plain load_state_dict into upstream's float32 scale "
                    "parameter (legacy F4). The cast rounded away its low bits, which hold 10 of "
                    "the scale's 19 bits, so the scale cannot be recovered. Re-export: load the "
                    "original checkpoint, the one with the int64 scale, with compat "
                    "(compat.LinearQuant keeps int64), or re-encode the float scales with "
                    "compat.trans_quant_param",
                )
                return
            if g.has_nan("scale", values):
                return
    context = _context(out, row, pertoken)
    if g.check_dtype("scale", (*float_legal, _I64), context):
        g.keep("scale")


def _plan_offset(g: _Group, n: int | None, row: Row | None, pertoken: bool) -> None:
    if "offset" not in g.specs:
        return
    g.check_vector("offset", n, per_tensor=True)
    if row is not None and not _dtypes(row["offset"]):
        spec = g.specs["offset"]
        g.problem(
            "offset",
            f"an offset ({spec}) is not allowed "
            f"{_context(g.ctx.output_dtype, row, pertoken)}: quant_matmul takes an offset only "
            f"for output_dtype {_outputs_text(A8W8, with_offset=True)}; allowed here: no "
            "offset (build the module with offset=False, or with the output dtype the "
            "checkpoint was made for)",
        )
        return
    if not g.check_dtype("offset", LEGAL["offset"]):
        return
    values = g.values("offset")
    if values is not None and g.has_nan("offset", values):
        return
    g.keep("offset")
    scale_spec = g.specs.get("scale")
    scale = g.values("scale") if scale_spec is not None and scale_spec.dtype == _I64 else None
    if scale is None or values is None or "scale" not in g.changes:
        return
    # F2: the offset key is stale; the hardware applies the offset folded into the scale.
    try:
        folded = decode(scale)[1]
        mine = torch.round(values).clamp(-256, 255)
        folded, mine = torch.broadcast_tensors(folded, mine)
    except RuntimeError:
        return
    differ = (folded != mine).reshape(-1)
    if bool(differ.any()):
        i = int(differ.nonzero()[0, 0])
        g.notes.append(
            f"{g.keys['offset']!r} (rounded: {int(mine.reshape(-1)[i])} at index {i}) disagrees "
            f"with the offset folded into the int64 scale ({int(folded.reshape(-1)[i])}); the "
            "hardware applies the folded one and ignores the offset tensor"
        )


def _plan_bias(g: _Group, n: int | None, row: Row | None, pertoken: bool) -> None:
    if "bias" not in g.specs:
        return
    g.check_vector("bias", n, per_tensor=False)
    legal = _dtypes(row["bias"]) if row is not None else LEGAL["bias"]
    if g.check_dtype("bias", legal, _context(g.ctx.output_dtype, row, pertoken)):
        g.keep("bias")


def _plan_pertoken(g: _Group) -> None:
    if "pertoken_scale" not in g.specs:
        return
    g.check_vector("pertoken_scale", None, per_tensor=False)
    if g.check_dtype("pertoken_scale", LEGAL["pertoken_scale"]):
        g.keep("pertoken_scale", "per-call data: upstream saves its (out_features,) placeholder")


def plan_group(
    prefix: str, keys: Mapping[str, str], access: Access, ctx: Context, problems: list[str]
) -> GroupPlan:
    """Plan the upgrade of one quant linear's keys (``name -> full key``).

    Problems are appended to ``problems`` (the caller raises once for all groups); the
    returned plan lists every key that passed its checks.
    """
    g = _Group(prefix, keys, access, ctx, problems)
    before = len(problems)
    n = _out_features(g)
    weight_dtype = _plan_weight(g)
    scheme = (scheme_of(weight_dtype) or A8W8) if weight_dtype is not None else ctx.scheme
    pertoken = ctx.pertoken if ctx.pertoken is not None else "pertoken_scale" in keys
    out = ctx.output_dtype
    row = scheme.row(out, pertoken) if out is not None else None
    if out is not None and row is None and scheme is not A8W8:
        spec = g.specs["weight"]
        g.changes.pop("weight", None)
        g.problem(
            "weight",
            f"dtype {dtype_name(spec.dtype)} (shape {shape_text(spec.shape)}) is not allowed "
            f"for output_dtype={dtype_name(out)}{' with pertoken_scale' if pertoken else ''}: "
            f"an {dtype_name(spec.dtype)} weight is {scheme.name} ({scheme.pack} packed values), "
            f"which quant_matmul supports only for output_dtype {_outputs_text(scheme)}; allowed "
            "here: "
            + (
                dtype_name(A8W8.storage_dtype)
                if A8W8.row(out, pertoken) is not None
                else "nothing (the module's configuration is not a legal quant_matmul combination)"
            ),
        )
    elif out is not None and row is None:
        g.notes.append(
            f"module configuration {scheme.name}, "
            f"output_dtype={dtype_name(out)}{', pertoken_scale' if pertoken else ''} is not a "
            "legal quant_matmul combination; dtypes were checked against the union of legal "
            "dtypes only"
        )
    _plan_scale(g, n, row, pertoken)
    _plan_offset(g, n, row, pertoken)
    _plan_pertoken(g)
    _plan_bias(g, n, row, pertoken)
    if not g.formats and len(problems) == before:
        g.formats.add("F1")  # plain upstream: only when no legacy format was found
    order = [name for name in NAMES if name in g.changes]
    if out is not None:
        shown, source, why = dtype_name(out), "given", ""
    else:
        possible, why = infer_output_dtypes(g.specs, scheme, pertoken)
        one = len(possible) == 1
        shown = dtype_name(possible[0]) if one else "unknown"
        source = "inferred" if one else "unknown"
    return GroupPlan(
        prefix=prefix,
        formats=tuple(sorted(g.formats)),
        output_dtype=shown,
        keys=tuple(g.changes[name] for name in order),
        notes=tuple(g.notes),
        output_dtype_source=source,
        output_dtype_reason=why,
    )


def infer_output_dtypes(
    specs: Mapping[str, Spec], scheme: Scheme, pertoken: bool
) -> tuple[tuple[torch.dtype, ...], str]:
    """The output dtypes a group's dtypes allow (dtype-table rows of ``scheme`` with this
    pertoken setting), and why: the keys that narrow the choice, in words.

    An int64 scale implies nothing: torchair encodes the scale whatever the module's output
    dtype (format F2), and the planner decodes it where a float scale is needed.
    """
    rows = {out: row for (out, pt), row in scheme.rows.items() if pt == pertoken}
    every = tuple(rows)
    possible = list(every)
    reasons = []
    for name in ("scale", "offset", "bias"):
        spec = specs.get(name)
        got = None if spec is None else spec.dtype
        if got == _I64 and name == "scale":
            continue
        allowed_by = [out for out, row in rows.items() if got in row[name]]
        if got is None or set(allowed_by) == set(every):
            continue
        possible = [out for out in possible if out in allowed_by]
        what = "an offset" if name == "offset" else f"a {dtype_name(got)} {name}"
        outs = ", ".join(dtype_name(o) for o in allowed_by) or "no output dtype"
        reasons.append(f"{what} is legal only with output_dtype {outs}")
    if pertoken:
        reasons.append("pertoken_scale allows only " + ", ".join(dtype_name(o) for o in every))
    if not reasons:
        return tuple(possible), ""
    if len(possible) > 1:
        left = ", ".join(dtype_name(o) for o in possible)
        return tuple(possible), f"one of {left} ({'; '.join(reasons)})"
    return tuple(possible), "; ".join(reasons)


# --------------------------------------------------------------------------- transformations
def transform_chunk(
    action: str, chunk: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply an action to (a flat chunk of) a tensor; every action is element-wise.

    ``out``: a reused int8 buffer of at least ``chunk.numel()`` elements for RESTORE.
    """
    if action == KEEP:
        return chunk
    if action == RESTORE:  # exact: every value was checked to be an integer in int8 range
        return chunk.to(_I8) if out is None else out[: chunk.numel()].copy_(chunk)
    if action == DECODE:
        return decode(chunk)[0]
    raise ValueError(f"unknown upgrade action {action!r}")


def apply(change: KeyChange, tensor: torch.Tensor) -> torch.Tensor:
    """The upgraded tensor for one key (the input tensor itself when unchanged)."""
    if change.action == KEEP:
        return tensor
    if change.result is not None:
        return change.result
    return transform_chunk(change.action, tensor)
