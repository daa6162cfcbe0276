"""Every int8 matmul kernel and the optimised epilogue, against int64/float64 numpy.

The expected integer products are re-derived here with numpy int64 matmuls; the full
op results come from the independent oracle in ``tests/oracle.py``. Nothing below
calls the code under test to build an expected value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import numpy as np
import oracle
import pytest
import torch
from conftest import as_numpy, run_python
from hypothesis import example, given, settings
from hypothesis import strategies as st

import compat
from compat.ops import intmm

I8, I32, I64 = torch.int8, torch.int32, torch.int64
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
OUT_NAMES = {I8: "int8", F16: "float16", BF16: "bfloat16", I32: "int32"}
CPU_KERNELS = ("float", "int_mm")
# the float kernel's two ways of covering k: x1's digits (few rows) or chunks of k
FLOAT_MODES = {"float-digits": 10**9, "float-chunks": 0}


# the int_mm kernel's two layouts of the product (auto picks one per shape and machine)
INT_MM_MODES = {"int_mm": "direct", "int_mm-swapped": "swapped"}


@pytest.fixture(params=[*FLOAT_MODES, *INT_MM_MODES])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test once per CPU kernel (float mode, int_mm layout), restoring the default
    after."""
    name: str = request.param
    if name in FLOAT_MODES:
        monkeypatch.setattr(intmm, "_DIGIT_ROWS", FLOAT_MODES[name])
    layout = intmm.set_int_mm_layout(INT_MM_MODES.get(name, "auto"))
    previous = intmm.set_cpu_kernel("float" if name in FLOAT_MODES else "int_mm")
    try:
        yield name
    finally:
        intmm.set_cpu_kernel(previous)
        intmm.set_int_mm_layout(layout)


def _ints(shape: tuple[int, ...], seed: int, low: int = -128, high: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, dtype=I8, generator=g)


def _np_product(x1: torch.Tensor, x2: torch.Tensor) -> np.ndarray:
    """The exact integer product, batch dims broadcast, in numpy int64."""
    return np.matmul(x1.numpy().astype(np.int64), x2.numpy().astype(np.int64))


def _check_product(x1: torch.Tensor, x2: torch.Tensor) -> None:
    got = intmm.int_matmul(x1, x2)
    want = _np_product(x1, x2)
    assert got.dtype == I32
    assert tuple(got.shape) == want.shape
    assert np.array_equal(got.numpy().astype(np.int64), want)


# ------------------------------------------------------------------ the integer product
def test_float32_chunk_is_exact_by_construction() -> None:
    # every partial sum of one chunk is an integer of magnitude <= 2**24
    assert 128 * 128 * intmm.FLOAT32_EXACT_CHUNK <= 2**24


@pytest.mark.parametrize("k", [1, 1024, 1025, 4096, 16384, 32768, 65535, 131072])
def test_digit_split_is_exact_and_complete(k: int) -> None:
    bits, count = intmm.digit_split(k)
    values = np.arange(-128, 128, dtype=np.int64)
    low = [(values >> (bits * d)) & (2**bits - 1) for d in range(count - 1)]
    top = values >> (bits * (count - 1))
    digits = [*low, top]
    # the digits recombine to every int8 value ...
    assert np.array_equal(sum(dig << (bits * d) for d, dig in enumerate(digits)), values)
    # ... and each digit times any weight, summed over k, stays exact in float32
    assert all(int(np.abs(dig).max()) * 128 * k <= 2**24 for dig in digits)


def test_digit_split_limits() -> None:
    assert intmm.digit_split(1024) == (8, 1)  # no split needed
    assert intmm.digit_split(4096) == (5, 2)
    assert intmm.digit_split(2**17 + 1) == (0, 0)  # beyond the digit mode: chunks of k


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [
        (1, 1, 1),
        (3, 7, 5),
        (1, 4096, 300),
        (16, 1025, 129),
        (5, 3000, 1100),
        (2, 2048, 65),
        (40, 2100, 70),  # more rows than the digit mode takes by default
        (3, 17000, 9),  # three digits
    ],
)
@pytest.mark.parametrize("layout", ["transposed", "contiguous", "strided"])
def test_product_matches_int64(kernel: str, m: int, k: int, n: int, layout: str) -> None:
    x1 = _ints((m, k), seed=m * 7 + k)
    if layout == "transposed":  # how LinearQuant passes its weight: weight.t()
        x2 = _ints((n, k), seed=n).t()
    elif layout == "contiguous":
        x2 = _ints((k, n), seed=n)
    else:  # a column slice of a wider matrix: neither row- nor column-contiguous
        x2 = _ints((k, n + 3), seed=n)[:, 2 : n + 2]
    _check_product(x1, x2)


@pytest.mark.parametrize("value", [-128, 127])
def test_extreme_values_everywhere(kernel: str, value: int) -> None:
    # |acc| = 128 * 128 * k: far above 2**24, where a single float32 GEMM loses bits
    k = 5000
    x1 = torch.full((3, k), value, dtype=I8)
    x2 = torch.full((k, 4), -128, dtype=I8)
    x2[:, 1] = 127
    x2[::2, 2] = -128  # alternating signs: large partial sums that cancel
    x2[1::2, 2] = 127
    _check_product(x1, x2)


def test_largest_legal_k(kernel: str) -> None:
    k = 65535
    x1 = torch.full((2, k), -128, dtype=I8)
    x1[1, ::3] = 127
    x2 = torch.full((3, k), -128, dtype=I8).t()
    x2[1::2, 1] = 127
    _check_product(x1, x2)
    assert intmm.int_matmul(x1, x2)[0, 0].item() == 128 * 128 * k  # 1073725440 < 2**30


def test_block_boundaries(kernel: str) -> None:
    # n not a multiple of the block width, and a block of a single column
    k = 700
    cols = intmm.block_cols(k, 10**6)
    for n in (cols - 1, cols, cols + 1, 2 * cols + 1):
        _check_product(_ints((2, k), seed=n), _ints((n, k), seed=n + 1).t())


@pytest.mark.parametrize(
    ("shape1", "shape2"),
    [
        ((2, 3, 5, 1100), (1100, 7)),  # 2-D x2: batch folded into m
        ((2, 3, 5, 1100), (3, 1100, 7)),  # batched x2, broadcast over x1's leading dim
        ((5, 64), (4, 64, 9)),  # 2-D x1 against a batched x2
        ((4, 1, 5, 64), (1, 3, 64, 9)),  # both broadcast
        ((3, 5, 1100), (1, 1100, 7)),  # one x2 matrix for every batch element
        ((2, 1, 5, 64), (1, 4, 64, 9)),  # x1 broadcast against a batched x2
    ],
)
def test_batched_and_broadcast(
    kernel: str, shape1: tuple[int, ...], shape2: tuple[int, ...]
) -> None:
    _check_product(_ints(shape1, seed=1), _ints(shape2, seed=2))


def test_expanded_x2_is_folded(kernel: str) -> None:
    # a stride-0 batch dim (one weight for every batch element) and x1 broadcast to it
    x1 = _ints((1, 5, 1500), seed=5)
    x2 = _ints((9, 1500), seed=6).t().expand(3, 1500, 9)
    _check_product(x1, x2)
    got = intmm.int_matmul(x1, x2)
    assert tuple(got.shape) == (3, 5, 9) and torch.equal(got[0], got[2])


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 9),
    k=st.integers(1, 2600),
    n=st.integers(1, 40),
    transposed=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    kernel_name=st.sampled_from(CPU_KERNELS),
)
def test_product_property(
    m: int, k: int, n: int, transposed: bool, seed: int, kernel_name: str
) -> None:
    x1 = _ints((m, k), seed)
    x2 = _ints((n, k), seed + 1).t() if transposed else _ints((k, n), seed + 1)
    previous = intmm.set_cpu_kernel(kernel_name)
    try:
        _check_product(x1, x2)
    finally:
        intmm.set_cpu_kernel(previous)


@pytest.mark.parametrize("batched", [False, True])
def test_chunked_float32_path_used_for_other_devices(batched: bool) -> None:
    # the buffer-free kernel (any non-CPU device, and CPU code under torch.compile)
    x1 = _ints((2, 3, 2100) if batched else (3, 2100), seed=3)
    x2 = _ints((2, 2100, 5) if batched else (2100, 5), seed=4)
    got = intmm._chunked_float32(x1, x2)
    assert np.array_equal(got.numpy().astype(np.int64), _np_product(x1, x2))


def test_custom_op_for_compile() -> None:
    # the CPU kernel as torch.compile sees it: an opaque custom op with a fake impl
    x1, x2 = _ints((4, 2500), seed=31), _ints((70, 2500), seed=32).t()
    got = torch.ops.compat.blocked_float32_int8_mm(x1, x2)
    assert np.array_equal(got.numpy().astype(np.int64), _np_product(x1, x2))
    meta = torch.ops.compat.blocked_float32_int8_mm(x1.to("meta"), x2.to("meta"))
    assert meta.device.type == "meta" and tuple(meta.shape) == (4, 70) and meta.dtype == I32


def test_meta_device_shapes(kernel: str) -> None:
    x1 = torch.empty((2, 3, 4, 3000), dtype=I8, device="meta")
    x2 = torch.empty((6, 3000), dtype=I8, device="meta").t()
    out = intmm.int_matmul(x1, x2)
    assert out.device.type == "meta" and out.dtype == I32 and tuple(out.shape) == (2, 3, 4, 6)


def test_kernel_selection_api() -> None:
    previous = intmm.set_cpu_kernel("int_mm")
    try:
        assert intmm.cpu_kernel() == "int_mm"
        assert intmm.set_cpu_kernel("float") == "int_mm"
        assert intmm.cpu_kernel() == "float"
        assert intmm.set_cpu_kernel("auto") == "float"
        assert intmm.cpu_kernel() in ("float", "int_mm")
        with pytest.raises(ValueError, match="allowed: auto, float, int_mm"):
            intmm.set_cpu_kernel("fbgemm")
    finally:
        intmm.set_cpu_kernel(previous)


def _saturating_int_mm(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """A model of int8 GEMMs on CPUs without VNNI (``vpmaddubsw``): x1 + 128 as uint8
    times x2, adjacent products summed in pairs with int16 saturation, then
    128 * column sums taken off. Exact unless a pair sum leaves int16."""
    u = x1.to(torch.int32) + 128
    products = u[:, :, None] * x2.to(torch.int32)[None]  # (m, k, n)
    pairs = products.view(x1.shape[0], -1, 2, x2.shape[1]).sum(2).clamp(-(2**15), 2**15 - 1)
    return pairs.sum(1, dtype=torch.int32) - 128 * x2.to(torch.int32).sum(0)


@pytest.mark.parametrize(
    ("fast_int8", "int_mm", "expected"),
    [
        (False, None, "float"),  # no VNNI/AMX: never probed
        (True, None, "int_mm"),  # this torch's _int_mm is exact (slow here, but exact)
        (True, _saturating_int_mm, "float"),
        (True, "raises", "float"),
    ],
)
def test_auto_selects_int_mm_only_when_it_is_exact(
    monkeypatch: pytest.MonkeyPatch,
    fast_int8: bool,
    int_mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | str | None,
    expected: str,
) -> None:
    def raises(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("_int_mm: not implemented for this CPU")

    monkeypatch.setattr(intmm, "_cpu_has_fast_int8", lambda: fast_int8)
    if int_mm is not None:
        monkeypatch.setattr(torch, "_int_mm", raises if int_mm == "raises" else int_mm)
    previous = intmm.set_cpu_kernel("auto")
    try:
        assert intmm.cpu_kernel() == expected
    finally:
        intmm.set_cpu_kernel(previous)


def test_saturating_model_is_exact_without_saturation() -> None:
    # the model above is a faithful GEMM except for the saturation it is there to show
    g = torch.Generator().manual_seed(5)
    x1 = torch.randint(-128, 0, (4, 64), dtype=I8, generator=g)  # x1 + 128 <= 127
    x2 = torch.randint(-128, 128, (64, 8), dtype=I8, generator=g)
    want = torch.from_numpy(x1.numpy().astype(np.int64) @ x2.numpy().astype(np.int64))
    assert torch.equal(_saturating_int_mm(x1, x2).to(torch.int64), want)
    x1 = torch.full((1, 64), 127, dtype=I8)
    x2 = torch.full((64, 1), -128, dtype=I8)
    assert _saturating_int_mm(x1, x2).item() != 127 * -128 * 64


@pytest.mark.parametrize(("value", "expected"), [("float", "float"), (" INT_MM ", "int_mm")])
def test_environment_variable_selects_the_kernel(value: str, expected: str) -> None:
    code = "from compat.ops import intmm; print(intmm.cpu_kernel())"
    proc = run_python(code, env={"COMPAT_CPU_INT_MATMUL": value})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_environment_variable_rejects_unknown_kernels() -> None:
    proc = run_python("import compat.ops.intmm", env={"COMPAT_CPU_INT_MATMUL": "fbgemm"})
    assert proc.returncode != 0
    assert "COMPAT_CPU_INT_MATMUL='fbgemm'" in proc.stderr
    assert "allowed: auto, float, int_mm" in proc.stderr


def test_block_cols_range() -> None:
    assert intmm.block_cols(4096, 4096) == 512
    assert intmm.block_cols(4096, 100) == 100  # never wider than x2
    assert intmm.block_cols(65535, 10**6) == 64  # minimum width
    assert intmm.block_cols(1, 10**6) == 1024  # maximum width


# ------------------------------------------------------------------ the whole op
def _wide_bias(n: int, seed: int) -> torch.Tensor:
    """int32 bias covering both overflow directions and the +-2**30 boundaries."""
    edges = [-(2**31), -(2**31) + 1, -(2**30) - 1, -(2**30), 2**30 - 1, 2**30, 2**31 - 1, 0]
    g = torch.Generator().manual_seed(seed)
    rnd = torch.randint(-(2**31), 2**31, (n,), dtype=I64, generator=g)
    rnd[: len(edges)] = torch.tensor(edges[:n], dtype=I64)
    return rnd.to(I32)


def _oracle(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    out: torch.dtype,
    bias: torch.Tensor | None,
    offset: torch.Tensor | None = None,
) -> np.ndarray:
    return oracle.quant_matmul(
        x1.numpy(),
        x2.numpy(),
        scale.numpy(),
        offset=None if offset is None else offset.numpy(),
        bias=None if bias is None else bias.numpy(),
        bias_kind=None if bias is None else "int32",
        out=OUT_NAMES[out],
        scale_kind="int64" if scale.dtype == I64 else "float32",
    )


@pytest.mark.parametrize("out", [I8, F16, BF16, I32])
def test_bias_wraps_in_int32(kernel: str, out: torch.dtype) -> None:
    # acc near +-128*128*k plus biases near +-2**31: the sum overflows int32 and wraps
    k, n = 3000, 12
    x1 = torch.full((4, k), 127, dtype=I8)
    x1[1] = -128
    x1[2, ::2] = -128
    x1[3] = _ints((k,), seed=9)
    x2 = torch.full((k, n), 127, dtype=I8)
    x2[:, n // 2 :] = -128
    bias = _wide_bias(n, seed=1)
    scale = torch.full((n,), 2.0**-20) if out != I8 else torch.full((n,), 2.0**-24)
    got = compat.quant_matmul(x1, x2, scale, bias=bias, output_dtype=out)
    np.testing.assert_array_equal(as_numpy(got), _oracle(x1, x2, scale, out, bias))
    if out == I32:  # the wrap really happened in this example
        wide = _np_product(x1, x2) + bias.numpy().astype(np.int64)
        assert ((wide > 2**31 - 1) | (wide < -(2**31))).any()


@pytest.mark.parametrize("out", [I8, F16, BF16, I32])
@pytest.mark.parametrize("batched", [False, True])
def test_linear_shapes_match_oracle(kernel: str, out: torch.dtype, batched: bool) -> None:
    # the LinearQuant call shape: x (..., m, k) @ weight.t(), per-channel scale
    k, n = 2500, 33
    x1 = _ints((2, 5, k) if batched else (7, k), seed=11)
    w = _ints((n, k), seed=12)
    g = torch.Generator().manual_seed(13)
    scale = torch.rand(n, generator=g) * 2e-5
    offset = (torch.rand(n, generator=g) - 0.5) * 40 if out == I8 else None
    bias = torch.randint(-(2**20), 2**20, (n,), dtype=I32, generator=g)
    got = compat.quant_matmul(x1, w.t(), scale, offset=offset, bias=bias, output_dtype=out)
    want = _oracle(x1, w.t(), scale, out, bias, offset)
    np.testing.assert_array_equal(as_numpy(got), want)


def test_int64_scale_and_3d_bias(kernel: str) -> None:
    k, n = 1500, 8
    x1 = _ints((3, 4, k), seed=21)
    x2 = _ints((3, k, n), seed=22)
    g = torch.Generator().manual_seed(23)
    q = compat.trans_quant_param(torch.rand(n, generator=g) * 1e-4)
    bias = torch.randint(-(2**31), 2**31, (3, 1, n), dtype=I64, generator=g).to(I32)
    got = compat.quant_matmul(x1, x2, q, bias=bias, output_dtype=F16)
    want = oracle.quant_matmul(
        x1.numpy(), x2.numpy(), q.numpy(), bias=bias.numpy(), bias_kind="int32",
        out="float16", scale_kind="int64",
    )  # fmt: skip
    np.testing.assert_array_equal(as_numpy(got), want)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 6),
    k=st.integers(1, 2200),
    n=st.integers(1, 24),
    out=st.sampled_from([I8, F16, BF16, I32]),
    extreme=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    kernel_name=st.sampled_from([*CPU_KERNELS, "int_mm-swapped"]),
)
@example(m=1, k=1, n=2, out=I8, extreme=False, seed=0, kernel_name="int_mm")  # issue 13
@example(m=5, k=1, n=2, out=I8, extreme=True, seed=0, kernel_name="int_mm-swapped")
def test_op_property(
    m: int, k: int, n: int, out: torch.dtype, extreme: bool, seed: int, kernel_name: str
) -> None:
    layout = intmm.set_int_mm_layout(INT_MM_MODES.get(kernel_name, "auto"))
    previous = intmm.set_cpu_kernel(kernel_name.removesuffix("-swapped"))
    try:
        _check_op(m, k, n, out, extreme, seed)
    finally:
        intmm.set_cpu_kernel(previous)
        intmm.set_int_mm_layout(layout)


def _check_op(m: int, k: int, n: int, out: torch.dtype, extreme: bool, seed: int) -> None:
    if extreme:
        x1 = torch.where(_ints((m, k), seed) >= 0, 127, -128).to(I8)
        w = torch.where(_ints((n, k), seed + 1) >= 0, 127, -128).to(I8)
    else:
        x1, w = _ints((m, k), seed), _ints((n, k), seed + 1)
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, generator=g) * 1e-3
    offset = torch.randn(n, generator=g) * 100 if out == I8 else None
    bias = _wide_bias(n, seed)
    got = compat.quant_matmul(x1, w.t(), scale, offset=offset, bias=bias, output_dtype=out)
    np.testing.assert_array_equal(as_numpy(got), _oracle(x1, w.t(), scale, out, bias, offset))


# The issue 13 case: k == 1, the accumulator plus an int32 bias wraps, int8 output.
# torch._int_mm on CPU returned uninitialised memory for k == 1 in some calls, so one
# call per process is not enough: the same call runs many times in fresh interpreters,
# once per forced kernel (and auto), each compared with the oracle computed here.
_REPEAT_CODE = """
import json, torch, compat
x1 = torch.tensor([[44]], dtype=torch.int8)
w = torch.tensor([[-91], [107]], dtype=torch.int8)
scale = torch.rand(2, generator=torch.Generator().manual_seed(0)) * 1e-3
offset = torch.tensor([-29.0509, -107.0370])
bias = torch.tensor([-2147483648, -2147483647], dtype=torch.int32)
seen = {}
for out in (torch.int8, torch.int32):
    rows = []
    for _ in range(300):
        y = compat.quant_matmul(x1, w.t(), scale, offset=offset if out == torch.int8 else None,
                                bias=bias, output_dtype=out)
        rows.append(y.tolist())
    seen[str(out)] = rows
print(json.dumps(seen))
"""


@pytest.mark.parametrize("forced", ["auto", "float", "int_mm"])
def test_wrapping_k1_case_is_deterministic_in_fresh_processes(forced: str) -> None:
    x1 = torch.tensor([[44]], dtype=I8)
    w = torch.tensor([[-91], [107]], dtype=I8)
    scale = torch.rand(2, generator=torch.Generator().manual_seed(0)) * 1e-3
    offset = torch.tensor([-29.0509, -107.0370])
    bias = torch.tensor([-(2**31), -(2**31) + 1], dtype=I32)
    want8 = _oracle(x1, w.t(), scale, I8, bias, offset).tolist()
    want32 = _oracle(x1, w.t(), scale, I32, bias).tolist()
    assert want8 == [[127, -128]]  # the value the issue states, re-derived by the oracle
    for _ in range(3):
        proc = run_python(_REPEAT_CODE, env={"COMPAT_CPU_INT_MATMUL": forced})
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(proc.stdout)
        assert all(row == want8 for row in seen["torch.int8"])
        assert all(row == want32 for row in seen["torch.int32"])


@pytest.mark.parametrize("n", [1, 2, 3, 17, 64])
@pytest.mark.parametrize("m", [1, 5, 33])
def test_k1_products_are_exact_every_call(kernel: str, m: int, n: int) -> None:
    x1, x2 = _ints((m, 1), seed=m), _ints((n, 1), seed=n + 100).t()
    want = _np_product(x1, x2)
    for _ in range(50):
        assert np.array_equal(intmm.int_matmul(x1, x2).numpy().astype(np.int64), want)


@pytest.mark.parametrize("offset", [None, 7.0])
def test_nan_scale_int8_output_is_defined(kernel: str, offset: float | None) -> None:
    # a NaN scale has no hardware-defined result (CANN forbids it); compat defines it as 0
    # (plus the offset) instead of leaving it to an undefined float -> int8 cast
    x1 = _ints((6, 40), seed=3)
    w = _ints((3, 40), seed=4)
    scale = torch.tensor([float("nan"), 1e-3, float("inf")])
    off = None if offset is None else torch.full((3,), offset)
    for _ in range(20):
        got = compat.quant_matmul(x1, w.t(), scale, offset=off, bias=None, output_dtype=I8)
        col0 = got[:, 0].to(I64).tolist()
        assert col0 == [int(offset or 0)] * 6
        acc = _np_product(x1, w.t())[:, 2]
        want_inf = np.where(acc > 0, 127, np.where(acc < 0, -128, 0))
        # inf * 0 is NaN -> 0 (+ offset); +-inf saturates
        want_inf = np.where(acc == 0, int(offset or 0), want_inf)
        assert got[:, 2].to(I64).numpy().tolist() == want_inf.tolist()


# --- the int_mm kernel's layout: direct or swapped, auto measured once --------------------


def test_int_mm_layout_setting_and_errors() -> None:
    previous = intmm.set_int_mm_layout("swapped")
    try:
        assert intmm.int_mm_layout() == "swapped"
        assert intmm.set_int_mm_layout("direct") == "swapped"
        with pytest.raises(ValueError, match=r"layout 'sideways' is unknown; allowed: auto, "):
            intmm.set_int_mm_layout("sideways")
    finally:
        intmm.set_int_mm_layout(previous)


@pytest.mark.parametrize(
    ("direct_ms", "swapped_ms", "expected"), [(10.0, 5.0, True), (10.0, 9.5, False)]
)
def test_auto_swaps_only_when_measured_clearly_faster(
    monkeypatch: pytest.MonkeyPatch, direct_ms: float, swapped_ms: float, expected: bool
) -> None:
    times = iter([direct_ms, swapped_ms])
    monkeypatch.setattr(intmm, "_best_ms", lambda fn: next(times))
    monkeypatch.setattr(intmm, "_swap_verdict", None)
    assert intmm._measure_swap() is expected


def test_auto_never_swaps_where_the_swapped_product_is_inexact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = torch._int_mm

    def wrong_when_swapped(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = real(a, b)
        return out + 1 if a.shape[0] == 128 else out  # the weight first: the swapped call

    monkeypatch.setattr(torch, "_int_mm", wrong_when_swapped)
    monkeypatch.setattr(intmm, "_best_ms", lambda fn: pytest.fail("timed an inexact layout"))
    assert intmm._measure_swap() is False


@pytest.mark.parametrize(
    ("rows", "weight_view", "verdict", "expected"),
    [
        (16, True, True, True),
        (1, True, True, False),  # one row: a matrix-vector product either way
        (257, True, True, False),  # transposing back costs what the layout saves
        (16, False, True, False),  # x2 is not the .t() of a contiguous weight
        (16, True, False, False),  # measured: not faster (or not exact) here
        (16, "small", True, False),  # a weight below 2**22 elements stays in cache
        (16, "narrow", True, False),  # more than n / 16 rows (n = 8 here)
    ],
)
def test_auto_layout_rule(
    monkeypatch: pytest.MonkeyPatch,
    rows: int,
    weight_view: bool | str,
    verdict: bool,
    expected: bool,
) -> None:
    monkeypatch.setattr(intmm, "_swap_verdict", verdict)
    if weight_view != "small":  # the (8, 24) test weight counts as large
        monkeypatch.setattr(intmm, "_SWAP_MIN_WEIGHT", 8 * 24)
    if weight_view != "narrow":  # and as wide enough for 256 rows
        monkeypatch.setattr(intmm, "_SWAP_ROWS_PER_COLUMN", 32)
    previous = intmm.set_int_mm_layout("auto")
    calls: list[tuple[int, int]] = []
    real = torch._int_mm

    def spy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append((a.shape[0], b.shape[1]))
        return real(a, b)

    monkeypatch.setattr(torch, "_int_mm", spy)
    try:
        x1 = _ints((rows, 24), seed=rows)
        w = _ints((8, 24), seed=1)
        x2 = w.t() if weight_view else w.t().contiguous()
        got = intmm._cpu_int_mm(x1, x2)
        assert np.array_equal(got.numpy().astype(np.int64), _np_product(x1, x2))
        assert got.is_contiguous()
        assert calls == ([(8, rows)] if expected else [(rows, 8)])
    finally:
        intmm.set_int_mm_layout(previous)
