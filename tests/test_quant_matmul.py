"""compat.quant_matmul against the independent numpy oracle (docs/ops.md §2, §6, §7)."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
import torch
from conftest import as_numpy
from hypothesis import given, settings
from hypothesis import strategies as st

import compat

I8, I32, I64 = torch.int8, torch.int32, torch.int64
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
OUT_NAMES = {None: "int8", I8: "int8", F16: "float16", BF16: "bfloat16", I32: "int32"}


def _one(v: float, dtype: torch.dtype = F32) -> torch.Tensor:
    return torch.tensor([v], dtype=dtype)


def _pair(acc_target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x1 (1, k) and x2 (k, 1) int8 whose product is exactly ``acc_target``."""
    sign = -1 if acc_target < 0 else 1
    q, r = divmod(abs(acc_target), 127)
    row = [127] * q + [r]
    x1 = torch.tensor([[sign * v for v in row]], dtype=I8)
    x2 = torch.ones((len(row), 1), dtype=I8)
    return x1, x2


# ---------------------------------------------------------------- docs/ops.md §6 / §7 examples
def test_two_stage_saturation_example() -> None:
    x1, x2 = _pair(1000)
    q = compat.trans_quant_param(_one(1.0), _one(-200.0))
    assert compat.quant_matmul(x1, x2, q).tolist() == [[55]]  # naive clip(round(1000-200)) = 127


def test_ties_to_even() -> None:
    x1 = torch.tensor([[4], [5], [3], [-5]], dtype=I8)
    x2 = torch.tensor([[1]], dtype=I8)
    got = compat.quant_matmul(x1, x2, _one(0.5), output_dtype=I8)
    assert got.flatten().tolist() == [2, 2, 2, -2]


def test_fp19_truncation_examples() -> None:
    x1, x2 = _pair(1235)
    assert compat.quant_matmul(x1, x2, _one(0.1)).item() == 123  # exact 0.1 would give 124
    x1, x2 = _pair(20495)
    assert compat.quant_matmul(x1, x2, _one(0.1), output_dtype=F16).item() == 2048.0  # not 2050


def test_bf16_output_keeps_float32_scale() -> None:
    x1, x2 = _pair(20495)
    got = compat.quant_matmul(x1, x2, _one(0.1), output_dtype=BF16).float().item()
    assert got == float(torch.tensor(np.float32(20495) * np.float32(0.1)).to(BF16).float())


def test_int32_output_ignores_scale_and_adds_bias() -> None:
    x1 = torch.tensor([[3, -4]], dtype=I8)
    x2 = torch.tensor([[5], [6]], dtype=I8)
    bias = torch.tensor([100], dtype=I32)
    got = compat.quant_matmul(x1, x2, _one(123.0), bias=bias, output_dtype=I32)
    assert got.dtype == I32 and got.tolist() == [[3 * 5 - 4 * 6 + 100]]


def test_int_bias_before_scale_float_bias_after() -> None:
    x1 = torch.tensor([[1]], dtype=I8)
    x2 = torch.tensor([[3]], dtype=I8)
    scale = _one(0.5)
    # int32 bias: (3 + 1) * 0.5 = 2.0; float bias: 3 * 0.5 + 1 = 2.5
    got_int = compat.quant_matmul(
        x1, x2, scale, bias=torch.tensor([1], dtype=I32), output_dtype=BF16
    )
    got_f = compat.quant_matmul(x1, x2, scale, bias=_one(1.0), output_dtype=BF16)
    assert got_int.item() == 2.0 and got_f.item() == 2.5


def test_offset_rounding_and_clamp() -> None:
    x1, x2 = _pair(0)
    for offset, expected in [
        (0.4, 0),
        (2.5, 2),
        (3.5, 4),
        (-300.0, -128),
        (300.0, 127),
        (-2.5, -2),
    ]:
        got = compat.quant_matmul(x1, x2, _one(1.0), offset=_one(offset), output_dtype=I8)
        assert got.item() == expected, offset


def test_accumulator_beyond_2_24_is_converted_to_float32() -> None:
    k = 2048
    x1 = torch.full((1, k), -128, dtype=I8)
    x2 = torch.full((k, 1), -128, dtype=I8)
    x1[0, 0], x2[0, 0] = 1, 1  # acc = 128*128*2047 + 1 = 33538049: odd, above 2**24
    acc = 128 * 128 * (k - 1) + 1
    assert float(np.float32(acc)) != acc
    got_i32 = compat.quant_matmul(x1, x2, _one(1.0), output_dtype=I32)
    assert got_i32.item() == acc
    got_bf = compat.quant_matmul(x1, x2, _one(1.0), output_dtype=BF16)
    expected = oracle.quant_matmul(x1.numpy(), x2.numpy(), np.float32([1.0]), out="bfloat16")
    np.testing.assert_array_equal(as_numpy(got_bf), expected)


def test_int32_bias_overflow_wraps_like_the_golden() -> None:
    x1 = torch.full((1, 4), 127, dtype=I8)
    x2 = torch.full((4, 1), 127, dtype=I8)
    bias = torch.tensor([2**31 - 10], dtype=I32)
    got = compat.quant_matmul(x1, x2, _one(1.0), bias=bias, output_dtype=I32)
    assert got.item() == (4 * 127 * 127 + 2**31 - 10) - 2**32


def test_int64_scale_ignores_separate_offset_tensor() -> None:
    x1, x2 = _pair(10)
    q = compat.trans_quant_param(_one(1.0))  # no offset bits
    got = compat.quant_matmul(x1, x2, q, offset=_one(50.0))
    assert got.item() == 10


def test_denormal_scale_truncated_not_flushed() -> None:
    x1, x2 = _pair(16000)
    got = compat.quant_matmul(x1, x2, _one(1e-40), output_dtype=F16)
    assert got.item() == 0.0  # tiny but not flushed: 16000 * 9.18e-41 underflows fp16 to 0


def test_pertoken_is_per_row() -> None:
    x1 = torch.tensor([[1], [2], [3]], dtype=I8)
    x2 = torch.tensor([[10, 20]], dtype=I8)
    p = torch.tensor([1.0, 0.5, 0.25])
    got = compat.quant_matmul(x1, x2, torch.tensor([1.0, 2.0]), pertoken_scale=p, output_dtype=F16)
    assert got.tolist() == [[10.0, 40.0], [10.0, 40.0], [7.5, 30.0]]


def test_batch_broadcast_and_3d_bias() -> None:
    g = torch.Generator().manual_seed(1)
    x1 = torch.randint(-128, 128, (3, 1, 4, 8), dtype=I8, generator=g)
    x2 = torch.randint(-128, 128, (5, 8, 6), dtype=I8, generator=g)
    got = compat.quant_matmul(x1, x2, torch.rand(6, generator=g), output_dtype=I32)
    assert got.shape == (3, 5, 4, 6)
    np.testing.assert_array_equal(
        got.numpy(), np.matmul(x1.numpy().astype(np.int64), x2.numpy().astype(np.int64))
    )
    x1 = torch.randint(-128, 128, (2, 4, 8), dtype=I8, generator=g)
    x2 = torch.randint(-128, 128, (8, 6), dtype=I8, generator=g)
    bias = torch.randint(-1000, 1000, (2, 1, 6), dtype=I32, generator=g)
    scale = torch.rand(6, generator=g) * 0.01
    got = compat.quant_matmul(x1, x2, scale, bias=bias, output_dtype=F16)
    exp = oracle.quant_matmul(
        x1.numpy(), x2.numpy(), scale.numpy(), bias=bias.numpy(), bias_kind="int32", out="float16"
    )
    np.testing.assert_array_equal(got.numpy(), exp)


def test_meta_device_shapes_and_dtypes() -> None:
    x1 = torch.empty(2, 3, 16, dtype=I8, device="meta")
    w = torch.empty(8, 16, dtype=I8, device="meta")
    s = torch.empty(8, dtype=I64, device="meta")
    out = compat.quant_matmul(x1, w.t(), s, output_dtype=F16)
    assert out.device.type == "meta" and out.shape == (2, 3, 8) and out.dtype == F16


# ---------------------------------------------------------------- property tests
LEGAL = [
    # (out, scale kind, offset?, pertoken?, bias kind)
    (None, "float32", True, False, "int32"),
    (I8, "int64", False, False, None),
    (I8, "int64", True, False, "int32"),
    (I8, "float32", False, False, None),
    (F16, "float32", False, False, "int32"),
    (F16, "int64", False, False, None),
    (F16, "float32", False, True, "float16"),
    (F16, "float32", False, True, "float32"),
    (F16, "float32", False, True, "int32"),
    (BF16, "float32", False, False, "bfloat16"),
    (BF16, "bfloat16", False, True, "float32"),
    (BF16, "float32", False, True, "int32"),
    (BF16, "bfloat16", False, False, None),
    (I32, "float32", False, False, "int32"),
    (I32, "bfloat16", False, False, None),
]
int8_edge = st.sampled_from([-128, 127, 0, -1, 1])


@st.composite
def problems(draw):  # type: ignore[no-untyped-def]
    out, scale_kind, has_offset, has_pertoken, bias_kind = draw(st.sampled_from(LEGAL))
    # k = 1100 with extreme values drives |acc| past 2**24 (float32 loses low bits)
    k = draw(st.integers(1, 40) | st.just(1100))
    m, n = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    batch = draw(st.sampled_from([(), (2,), (1, 3)]))
    seed = draw(st.integers(0, 2**31 - 1))
    extremes = draw(st.booleans())
    g = torch.Generator().manual_seed(seed)
    if extremes:
        v = draw(int8_edge)
        x1 = torch.full((*batch, m, k), v, dtype=I8)
        x2 = torch.full((k, n), draw(int8_edge), dtype=I8)
    else:
        x1 = torch.randint(-128, 128, (*batch, m, k), dtype=I8, generator=g)
        x2 = torch.randint(-128, 128, (k, n), dtype=I8, generator=g)
    if draw(st.booleans()):
        x2 = x2.t().contiguous().t()  # transposed view, as LinearQuant passes it
    per_tensor = draw(st.booleans())
    ns = 1 if per_tensor else n
    mag = draw(st.sampled_from([1e-39, 1e-4, 3e-3, 0.1, 1.0]))  # 1e-39: denormal scales
    scale_f = (torch.rand(ns, generator=g) * 2 - 0.5) * mag
    offset = (
        (torch.rand(draw(st.sampled_from([1, n])), generator=g) - 0.5) * 700 if has_offset else None
    )
    if offset is not None and draw(st.booleans()):
        offset = torch.round(offset) + 0.5  # ties
    scale = {"float32": scale_f, "bfloat16": scale_f.to(BF16), "int64": None}[scale_kind]
    if scale_kind == "int64":  # lengths are 1 or n, so they always broadcast
        scale = compat.trans_quant_param(scale_f, offset)
    pertoken = (torch.rand(m, generator=g) + 0.25) if has_pertoken else None
    bias = None
    if bias_kind == "int32":
        bias = torch.randint(-(2**20), 2**20, (n,), dtype=I32, generator=g)
    elif bias_kind is not None:
        bias = (torch.randn(n, generator=g) * 50).to(getattr(torch, bias_kind))
    return x1, x2, scale, offset, pertoken, bias, out, scale_kind, bias_kind


@settings(max_examples=400, deadline=None)
@given(problems())
def test_matches_oracle(problem) -> None:  # type: ignore[no-untyped-def]
    x1, x2, scale, offset, pertoken, bias, out, scale_kind, _ = problem
    got = compat.quant_matmul(
        x1, x2, scale, offset=offset, pertoken_scale=pertoken, bias=bias, output_dtype=out
    )
    expected_dtype = I8 if out is None else out
    assert got.dtype == expected_dtype
    scale_np = scale.float().numpy() if scale.dtype == BF16 else scale.numpy()
    bias_np = None
    if bias is not None:
        bias_np = bias.numpy() if bias.dtype == I32 else bias.float().numpy()
    exp = oracle.quant_matmul(
        x1.numpy(),
        x2.numpy(),
        scale_np,
        offset=None if offset is None or scale_kind == "int64" else offset.numpy(),
        pertoken=None if pertoken is None else pertoken.numpy(),
        bias=bias_np,
        bias_kind=None if bias is None else ("int32" if bias.dtype == I32 else "float"),
        out=OUT_NAMES[out],
        scale_kind=scale_kind,
    )
    np.testing.assert_array_equal(as_numpy(got), exp)


# ---------------------------------------------------------------- A4W4
def _pack_int4(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.int64) & 0xF
    v = v.reshape(*values.shape[:-1], values.shape[-1] // 8, 8)
    packed = np.zeros(v.shape[:-1], dtype=np.int64)
    for j in range(8):
        packed |= v[..., j] << (4 * j)
    return np.where(packed >= 2**31, packed - 2**32, packed).astype(np.int32)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("out", [F16, BF16])
def test_a4w4(transposed: bool, out: torch.dtype) -> None:
    rng = np.random.default_rng(3)
    m, k, n = 3, 32, 16
    a = rng.integers(-8, 8, (m, k))
    b = rng.integers(-8, 8, (k, n))
    x1 = torch.from_numpy(_pack_int4(a))
    if transposed:
        x2 = torch.from_numpy(_pack_int4(b.T.copy())).t()  # (k/8, n) view of (n, k/8)
    else:
        x2 = torch.from_numpy(_pack_int4(b))  # (k, n/8)
    np.testing.assert_array_equal(oracle.unpack_int4(x1.numpy()), a)
    scale = torch.rand(n) * 0.1
    pertoken = torch.rand(m) + 0.5 if out == BF16 else None
    got = compat.quant_matmul(x1, x2, scale, pertoken_scale=pertoken, output_dtype=out)
    assert got.shape == (m, n)
    exp = oracle.quant_matmul(
        a,
        b,
        scale.numpy(),
        pertoken=None if pertoken is None else pertoken.numpy(),
        out=OUT_NAMES[out],
    )
    np.testing.assert_array_equal(as_numpy(got), exp)
