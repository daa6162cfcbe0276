"""The blocked in-place epilogue (issue 13) against tests/oracle.py on extreme operands.

Every output dtype, 2-D and 3-D x1, every forced CPU kernel, with blocks of the default
size and of two rows (so that block and batch boundaries fall inside the output).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import oracle
import pytest
import torch
from conftest import as_numpy
from test_kernels import kernel  # noqa: F401  (the per-kernel fixture)

import compat
from compat.ops import reference

I8, I32, I64 = torch.int8, torch.int32, torch.int64
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
pytestmark = pytest.mark.usefixtures("kernel")

K, N = 2304, 7  # |acc| up to 128 * 128 * 2304 > 2**24: the float32 conversion rounds
INT32_BIASES = [-(2**31), 2**31 - 1, 2**30, -(2**30) - 1, 5, -7, 0]  # wrap both ways


@pytest.fixture(params=["default", "two-rows"])
def blocks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Default epilogue blocks, or blocks of two rows."""
    if request.param == "two-rows":
        monkeypatch.setattr(reference, "_BLOCK_ELEMENTS", 2 * N)
    yield request.param


def _extreme_x1(batch: int | None, m: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (m, K), dtype=I8, generator=g)
    x[0], x[1], x[2, ::2], x[2, 1::2] = -128, 127, -128, 127
    if batch is None:
        return x
    return torch.stack([x, -x.clamp(min=-127), x.flip(0)][:batch])


def _extreme_weight() -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    w = torch.randint(-128, 128, (N, K), dtype=I8, generator=g)
    w[0], w[1], w[2, ::3] = -128, 127, 127
    return w


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().float().numpy()


def _check(
    x1: torch.Tensor,
    w: torch.Tensor,
    scale: torch.Tensor,
    out: torch.dtype,
    *,
    offset: torch.Tensor | None = None,
    pertoken: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> None:
    got = compat.quant_matmul(
        x1, w.t(), scale, offset=offset, pertoken_scale=pertoken, bias=bias, output_dtype=out
    )
    scale_kind = {I64: "int64", BF16: "bfloat16"}.get(scale.dtype, "float32")
    kind = None if bias is None else ("int32" if bias.dtype == I32 else "float")
    want = oracle.quant_matmul(
        x1.numpy(),
        w.t().numpy(),
        scale.numpy() if scale.dtype == I64 else _np(scale),
        offset=_np(offset),
        pertoken=_np(pertoken),
        bias=None if bias is None else (bias.numpy() if kind == "int32" else _np(bias)),
        bias_kind=kind,
        out={I8: "int8", F16: "float16", BF16: "bfloat16", I32: "int32"}[out],
        scale_kind=scale_kind,
    )
    assert got.dtype == out
    np.testing.assert_array_equal(as_numpy(got), want)


def _scales() -> torch.Tensor:
    """Per-channel scales from tiny to overflowing float16 (and a negative one)."""
    return torch.tensor([1e-9, 3.7e-5, -2.3e-3, 1.0, 0.1, 1e-2, 1e3], dtype=F32)


BATCHES = [None, 3]  # 2-D x1, or 3-D (3, 5, K)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.usefixtures("blocks")
def test_float16_int32_bias(batch: int | None) -> None:
    bias = torch.tensor(INT32_BIASES, dtype=I32)
    _check(_extreme_x1(batch), _extreme_weight(), _scales(), F16, bias=bias)
    _check(
        _extreme_x1(batch), _extreme_weight(), compat.trans_quant_param(_scales()), F16, bias=bias
    )


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("bias_dtype", [F16, F32, I32])
@pytest.mark.usefixtures("blocks")
def test_float16_pertoken(batch: int | None, bias_dtype: torch.dtype) -> None:
    pertoken = torch.tensor([1e-3, 2.5, -1.0, 7e-8, 65504.0], dtype=F32)
    values = [65504.0, -3.5, 0.25, -65504.0, 1.0, 0.0, 1e-3]
    bias = (
        torch.tensor(INT32_BIASES, dtype=I32)
        if bias_dtype == I32
        else torch.tensor(values).to(bias_dtype)
    )
    _check(_extreme_x1(batch), _extreme_weight(), _scales(), F16, pertoken=pertoken, bias=bias)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("scale_dtype", [F32, BF16])
@pytest.mark.parametrize("bias_dtype", [None, I32, BF16, F32])
@pytest.mark.usefixtures("blocks")
def test_bfloat16(batch: int | None, scale_dtype: torch.dtype, bias_dtype: torch.dtype) -> None:
    scale = _scales().mul(1e20).to(scale_dtype)  # large, finite (the oracle needs finite bf16)
    bias: torch.Tensor | None = None
    if bias_dtype == I32:
        bias = torch.tensor(INT32_BIASES, dtype=I32)
    elif bias_dtype is not None:
        bias = torch.tensor([1e38, -1.5, 2.0**-130, 0.0, 1e10, -1e38, 7.0]).to(bias_dtype)
    _check(_extreme_x1(batch), _extreme_weight(), scale, BF16, bias=bias)
    pertoken = torch.tensor([1.0, 1e-30, -2.0, 3e8, 0.5], dtype=F32)
    _check(_extreme_x1(batch), _extreme_weight(), scale, BF16, pertoken=pertoken, bias=bias)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("with_offset", [False, True])
@pytest.mark.usefixtures("blocks")
def test_int8(batch: int | None, with_offset: bool) -> None:
    bias = torch.tensor(INT32_BIASES, dtype=I32)
    scale = torch.tensor([1e-9, 1e-7, -1e-6, 1.0, 1e-5, 3e-4, 1e3], dtype=F32)
    offset = torch.tensor([-300.0, 255.0, -0.5, 2.5, 1e9, -1e9, 3.0]) if with_offset else None
    _check(_extreme_x1(batch), _extreme_weight(), scale, I8, offset=offset, bias=bias)
    param = compat.trans_quant_param(scale, offset)
    _check(_extreme_x1(batch), _extreme_weight(), param, I8, bias=bias)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_int32(batch: int | None, with_bias: bool) -> None:
    bias = torch.tensor(INT32_BIASES, dtype=I32) if with_bias else None
    _check(_extreme_x1(batch), _extreme_weight(), _scales(), I32, bias=bias)


@pytest.mark.parametrize("out", [F16, BF16, I32])
@pytest.mark.usefixtures("blocks")
def test_batch_bias(out: torch.dtype) -> None:
    """A (batch, 1, n) bias differs per batch element; pertoken rows repeat per batch."""
    bias = torch.tensor([INT32_BIASES, INT32_BIASES[::-1], [0] * N], dtype=I32)[:, None]
    pertoken = torch.tensor([1.0, 1e-3, -2.0, 3e3, 0.5], dtype=F32) if out == F16 else None
    _check(_extreme_x1(3), _extreme_weight(), _scales(), out, pertoken=pertoken, bias=bias)


def test_many_blocks_match_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of one row and a single block give the oracle's result for 64 rows."""
    g = torch.Generator().manual_seed(3)
    x1 = torch.randint(-128, 128, (64, K), dtype=I8, generator=g)
    bias = torch.tensor(INT32_BIASES, dtype=I32)
    for elements in (N, 10**9):
        monkeypatch.setattr(reference, "_BLOCK_ELEMENTS", elements)
        _check(x1, _extreme_weight(), _scales(), F16, bias=bias)
