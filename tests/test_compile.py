"""torch.compile(module, fullgraph=True) of LinearQuant and LinearA8W8Quant on CPU:
outputs equal eager bit for bit (and the independent oracle), with no graph break."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from conftest import as_numpy
from test_scale_cache import module_oracle

import compat
from compat.ops import intmm

I8, I32, F16, BF16 = torch.int8, torch.int32, torch.float16, torch.bfloat16
K, N = 1300, 24  # k > 1024: the exact float32 kernel needs two chunks

# torch's own inductor import (torch.utils.mkldnn) warns about torch.jit.script_method;
# that is torch warning about itself, not compat, so only that one warning is allowed.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _load(m: torch.nn.Module, output_dtype: torch.dtype, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.weight.copy_(torch.randint(-128, 128, (N, K), dtype=I8, generator=g))
        m.scale.copy_(torch.rand(N, generator=g) * (4e-5 if output_dtype == I8 else 1e-3))
        if m.offset is not None:
            m.offset.copy_((torch.rand(N, generator=g) - 0.5) * 80)
        # biases near +-2**31 make acc + bias wrap for some outputs
        wide = torch.randint(-(2**31), 2**31, (N,), dtype=torch.int64, generator=g)
        m.bias.copy_(wide.to(I32))


def _x(batched: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(-128, 128, (2, 3, K) if batched else (5, K), dtype=I8, generator=g)


def _compare(m: torch.nn.Module, x: torch.Tensor) -> None:
    compiled = torch.compile(m, fullgraph=True, backend="inductor")
    eager = m(x)
    got = compiled(x)
    assert got.dtype == eager.dtype and got.shape == eager.shape
    np.testing.assert_array_equal(as_numpy(got), as_numpy(eager))
    np.testing.assert_array_equal(as_numpy(eager), module_oracle(m, x))


@pytest.mark.parametrize("output_dtype", [I8, F16, BF16, I32])
def test_linear_quant(output_dtype: torch.dtype) -> None:
    m = compat.LinearQuant(K, N, offset=output_dtype == I8, output_dtype=output_dtype)
    _load(m, output_dtype)
    _compare(m, _x(batched=output_dtype in (F16, I32)))


@pytest.mark.parametrize("output_dtype", [I8, F16, BF16])
def test_linear_a8w8_quant(output_dtype: torch.dtype) -> None:
    cls = compat.LinearA8W8Quant  # a broken export fails here, it is never a skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation warning is tested elsewhere
        m = cls(K, N, offset=output_dtype == I8, output_dtype=output_dtype)
    _load(m, output_dtype, seed=3)
    _compare(m, _x(batched=output_dtype == F16))


def test_int_mm_kernel_under_compile() -> None:
    previous = intmm.set_cpu_kernel("int_mm")
    try:
        m = compat.LinearQuant(K, N, output_dtype=F16)
        _load(m, F16, seed=5)
        _compare(m, _x(batched=True))
    finally:
        intmm.set_cpu_kernel(previous)


def test_compiled_module_sees_scale_updates() -> None:
    # while compiling, the scale is encoded inside the graph, never cached
    m = compat.LinearQuant(K, N, output_dtype=F16)
    _load(m, F16, seed=9)
    x = _x(batched=False)
    compiled = torch.compile(m, fullgraph=True, backend="inductor")
    before = as_numpy(compiled(x))
    with torch.no_grad():
        m.scale.mul_(0.25)
    after = as_numpy(compiled(x))
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, module_oracle(m, x))
    np.testing.assert_array_equal(after, as_numpy(m(x)))
