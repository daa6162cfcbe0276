"""``compat.quant_matmul``: the contract of ``torch_npu.npu_quant_matmul`` (docs/ops.md).

Arguments are validated against the Atlas A2/A3 dtype table (docs/ops.md, "Dtype
table"; :mod:`compat.ops.schemes` holds it) and the shape rules (docs/ops.md, "Shapes")
before anything runs, on every backend, so that code tested here fails the same way it
would on an NPU. Nothing is cast silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compat.ops import backend
from compat.ops.checks import allowed, require_no_nan, require_tensor, shape_str
from compat.ops.output_dtype import parse_output_dtype
from compat.ops.reference import reference_quant_matmul
from compat.ops.schemes import SCHEMES, Scheme, scheme_of

_FUNC = "quant_matmul"
MAX_LAST_DIM = 65535
_MIN_RANK, _MAX_RANK = 2, 6

_F32 = torch.float32


@dataclass(frozen=True)
class _Plan:
    output_dtype: torch.dtype
    scheme: Scheme
    x2_transposed: bool


def check_output_dtype(func: str, output_dtype: object) -> torch.dtype | None:
    """Validate an ``output_dtype`` argument of ``func``: None or a supported dtype.

    None is returned as is: it means int8 in every version of the op.
    """
    if output_dtype is None:
        return None
    return parse_output_dtype(output_dtype, func=func, none=torch.int8)


def _check_dtypes(
    x1: torch.Tensor,
    x2: torch.Tensor,
    tensors: dict[str, torch.Tensor | None],
    out: torch.dtype,
) -> Scheme:
    scheme = scheme_of(x1.dtype)
    if scheme is None:
        kinds = ", ".join(
            f"{s.storage_dtype} ({s.name}"
            + (f", {s.pack} packed values per element)" if s.pack > 1 else ")")
            for s in SCHEMES
        )
        raise TypeError(f"{_FUNC}: argument 'x1' has dtype {x1.dtype}; allowed: {kinds}")
    if x2.dtype != x1.dtype:
        raise TypeError(
            f"{_FUNC}: argument 'x2' has dtype {x2.dtype}; it must match x1 ({x1.dtype})"
        )
    pertoken = tensors["pertoken_scale"]
    if pertoken is not None and pertoken.dtype != _F32:
        raise TypeError(
            f"{_FUNC}: argument 'pertoken_scale' has dtype {pertoken.dtype}; allowed: torch.float32"
        )
    row = scheme.row(out, pertoken is not None)
    if row is None:
        if scheme.row(out, pertoken is None) is not None:
            need = "requires" if pertoken is None else "does not allow"
            raise ValueError(
                f"{_FUNC}: output_dtype={out} with {scheme.label} {need} 'pertoken_scale' "
                f"(got {'None' if pertoken is None else 'a tensor'})"
            )
        legal = sorted(str(o) for o in scheme.output_dtypes)
        raise ValueError(
            f"{_FUNC}: argument 'output_dtype' is {out}, which {scheme.label} does not "
            f"support; allowed: {', '.join(legal)}"
        )
    for name in ("scale", "offset", "bias"):
        tensor = tensors[name]
        ok = row[name]
        got = None if tensor is None else tensor.dtype
        if got in ok:
            continue
        context = f"for {scheme.label} with output_dtype={out}" + (
            " and pertoken_scale" if pertoken is not None else ""
        )
        if ok == (None,):
            raise ValueError(
                f"{_FUNC}: argument {name!r} must be None {context}; got a {got} tensor"
                + (" (an offset exists only for int8 output)" if name == "offset" else "")
            )
        if got is None:
            raise ValueError(f"{_FUNC}: argument {name!r} is required {context}")
        raise TypeError(
            f"{_FUNC}: argument {name!r} has dtype {got}; allowed {context}: {allowed(ok)}"
        )
    return scheme


def _is_transposed_2d(x: torch.Tensor) -> bool:
    """Whether CANN takes ``x`` as the transpose of a contiguous matrix (how LinearQuant
    passes its weight), from its strides alone: ``stride(-2) == 1`` and
    ``stride(-1) == size(-2)``, except when both last dims are 1 (CANN's
    ``IsTransposeLastTwoDims``). PyTorch's ``is_contiguous`` is no guide: the ``.t()`` of
    an ``(n, 1)`` weight, shape ``(1, n)`` with strides ``(1, 1)``, counts as contiguous
    for PyTorch but is transposed for CANN (its storage's last dim is k = 1)."""
    if x.dim() < 2:
        return False
    rows, cols = x.shape[-2], x.shape[-1]
    if rows == 1 and cols == 1:
        return False
    return x.stride(-2) == 1 and x.stride(-1) == rows


def _broadcast_batch(a: torch.Size, b: torch.Size) -> tuple[int, ...]:
    """The broadcast of two batch shapes; equal or empty ones without torch's general
    (slower) routine."""
    if a == b or not b:
        return tuple(a)
    if not a:
        return tuple(b)
    return tuple(torch.broadcast_shapes(a, b))


def _check_shapes(
    x1: torch.Tensor,
    x2: torch.Tensor,
    tensors: dict[str, torch.Tensor | None],
    scheme: Scheme,
) -> bool:
    for name, t in (("x1", x1), ("x2", x2)):
        if not _MIN_RANK <= t.dim() <= _MAX_RANK:
            raise ValueError(
                f"{_FUNC}: argument {name!r} has {t.dim()} dims (shape {shape_str(t)}); "
                f"allowed: {_MIN_RANK} to {_MAX_RANK} dims"
            )
        if t.numel() == 0:
            raise ValueError(
                f"{_FUNC}: argument {name!r} is empty (shape {shape_str(t)}); empty tensors "
                f"are rejected on Atlas A2/A3"
            )
    transposed = _is_transposed_2d(x2)
    m = x1.shape[-2]
    unit = scheme.pack
    if unit > 1:
        if x2.dim() != 2:
            raise ValueError(
                f"{_FUNC}: argument 'x2' has shape {shape_str(x2)}; {scheme.name} needs a 2-D x2"
            )
        k_packed = x1.shape[-1]
        if transposed:
            inner, n = x2.shape[0], x2.shape[1]
            want = f"x2.shape[0] == x1.shape[-1] ({k_packed}) for a transposed x2 (k/{unit}, n)"
            ok = inner == k_packed
        else:
            inner, n = x2.shape[0], x2.shape[1] * unit
            want = f"x2.shape[0] == {unit} * x1.shape[-1] ({unit * k_packed}) for x2 (k, n/{unit})"
            ok = inner == unit * k_packed
        if not ok:
            raise ValueError(
                f"{_FUNC}: inner dims do not match: x1 {shape_str(x1)}, x2 {shape_str(x2)}; "
                f"need {want}"
            )
    else:
        if x1.shape[-1] != x2.shape[-2]:
            raise ValueError(
                f"{_FUNC}: inner dims do not match: x1 has k={x1.shape[-1]} (shape "
                f"{shape_str(x1)}) but x2 has k={x2.shape[-2]} (shape {shape_str(x2)})"
            )
        n = x2.shape[-1]
    # The limit applies to the last dim of each operand's storage (a transposed view is
    # swapped back first), and for A4W4 to the int4 sizes, i.e. 8x the packed int32 dim
    # (ops-nn aclnn_quant_matmul_v4.cpp: MaxDimCheck runs after ConvertTensorToInt4).
    for name, t, t_transposed in (("x1", x1, _is_transposed_2d(x1)), ("x2", x2, transposed)):
        size = unit * (t.shape[-2] if t_transposed else t.shape[-1])
        if size > MAX_LAST_DIM:
            notes = []
            if t_transposed:
                notes.append(f"{name} is a transposed view, so its storage's last dim counts")
            if unit > 1:
                notes.append(
                    f"{scheme.name} counts its packed values, {unit} per "
                    f"{str(x1.dtype).removeprefix('torch.')}"
                )
            raise ValueError(
                f"{_FUNC}: the last dim of {name!r} as the NPU sees it is {size}; allowed: at "
                f"most {MAX_LAST_DIM}" + (f" ({'; '.join(notes)})" if notes else "")
            )
    try:
        batch = _broadcast_batch(x1.shape[:-2], x2.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"{_FUNC}: batch dims of x1 {tuple(x1.shape[:-2])} and x2 {tuple(x2.shape[:-2])} do "
            f"not broadcast (right-aligned, each pair equal or one of them 1)"
        ) from None
    out_shape = (*batch, m, n)
    for name in ("scale", "offset"):
        vec = tensors[name]
        if vec is not None and (vec.dim() != 1 or vec.shape[0] not in (1, n)):
            raise ValueError(
                f"{_FUNC}: argument {name!r} has shape {shape_str(vec)}; allowed: (1,) or (n,) "
                f"= ({n},)"
            )
    pertoken = tensors["pertoken_scale"]
    if pertoken is not None and (pertoken.dim() != 1 or pertoken.shape[0] != m):
        raise ValueError(
            f"{_FUNC}: argument 'pertoken_scale' has shape {shape_str(pertoken)}; allowed: "
            f"(m,) = ({m},), m being x1's second-to-last dim"
        )
    bias = tensors["bias"]
    if bias is not None:
        ok_1d = bias.dim() == 1 and bias.shape[0] == n
        ok_3d = (
            unit == 1
            and len(out_shape) == 3
            and bias.dim() == 3
            and tuple(bias.shape) == (out_shape[0], 1, n)
        )
        if not (ok_1d or ok_3d):
            extra = (
                f" or (batch, 1, n) = ({out_shape[0]}, 1, {n})"
                if len(out_shape) == 3 and unit == 1
                else ""
            )
            raise ValueError(
                f"{_FUNC}: argument 'bias' has shape {shape_str(bias)}; allowed: (n,) = ({n},)"
                f"{extra}"
            )
    return transposed


def _check_devices(x1: torch.Tensor, others: dict[str, torch.Tensor | None]) -> None:
    for name, t in others.items():
        if t is not None and t.device != x1.device:
            raise ValueError(
                f"{_FUNC}: argument {name!r} is on {t.device} but 'x1' is on {x1.device}; all "
                f"tensors must be on one device"
            )


def _plan(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    optional: dict[str, torch.Tensor | None],
    output_dtype: object,
) -> _Plan:
    """Validate the arguments of :func:`quant_matmul` (``optional``: offset,
    pertoken_scale, bias); raise on anything illegal."""
    require_tensor(_FUNC, "x1", x1)
    require_tensor(_FUNC, "x2", x2)
    require_tensor(_FUNC, "scale", scale)
    for name, t in optional.items():
        if t is not None:
            require_tensor(_FUNC, name, t)
    checked = check_output_dtype(_FUNC, output_dtype)
    out = torch.int8 if checked is None else checked
    tensors: dict[str, torch.Tensor | None] = {"scale": scale, **optional}
    _check_devices(x1, {"x2": x2, **tensors})
    scheme = _check_dtypes(x1, x2, tensors, out)
    transposed = _check_shapes(x1, x2, tensors, scheme)
    offset = optional["offset"]
    if offset is not None and scale.dtype == _F32:
        # the offset is folded into the quant param: NaN has no 9-bit value
        require_no_nan(_FUNC, "offset", offset, "the offset must be a number")
    return _Plan(out, scheme, transposed)


def quant_matmul(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    *,
    offset: torch.Tensor | None = None,
    pertoken_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    output_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Quantized matmul with the semantics of ``torch_npu.npu_quant_matmul``.

    ``x1 (..., m, k)`` and ``x2 (..., k, n)`` are int8 (A8W8), or int32 holding eight
    packed int4 values each (A4W4). The int32 accumulator ``x1 @ x2`` is exact; an int32
    bias is added to it before scaling, a float bias after scale and pertoken. The
    output dtype defaults to int8. On NPU tensors the call is delegated to torch_npu;
    everywhere else the bit-faithful reference in :mod:`compat.ops.reference` runs.
    """
    optional = {"offset": offset, "pertoken_scale": pertoken_scale, "bias": bias}
    p = _plan(x1, x2, scale, optional, output_dtype)
    if backend.is_npu(x1) and backend.npu_status().available:
        return _npu_quant_matmul(x1, x2, scale, optional, output_dtype)
    return reference_quant_matmul(
        x1,
        x2,
        scale,
        **optional,
        output_dtype=p.output_dtype,
        scheme=p.scheme,
        x2_transposed=p.x2_transposed,
    )


def _npu_quant_matmul(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    optional: dict[str, torch.Tensor | None],
    output_dtype: torch.dtype | None,
) -> torch.Tensor:
    status = backend.npu_status()
    npu = status.module
    assert npu is not None
    if status.string_output_dtype:
        # torch 2.0 builds: (x1, x2, scale, offset, bias, str output_dtype), no pertoken.
        if optional["pertoken_scale"] is not None:
            raise NotImplementedError(
                f"{_FUNC}: pertoken_scale needs torch_npu 2.1 or newer; installed: {status.version}"
            )
        dtype_str = None if output_dtype is None else str(output_dtype).removeprefix("torch.")
        offset, bias = optional["offset"], optional["bias"]
        legacy: torch.Tensor = npu.npu_quant_matmul(x1, x2, scale, offset, bias, dtype_str)
        return legacy
    result: torch.Tensor = npu.npu_quant_matmul(
        x1, x2, scale, **optional, output_dtype=output_dtype
    )
    return result
