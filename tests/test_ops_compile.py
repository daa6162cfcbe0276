"""The reference runs under torch.compile(fullgraph=True) and matches eager bit-for-bit."""

from __future__ import annotations

import pytest
import torch

import compat

I8, I32 = torch.int8, torch.int32

# torch's own inductor import (torch.utils.mkldnn) warns about torch.jit.script_method;
# that is torch warning about itself, not compat, so only that one warning is allowed.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)


def _inputs(batched: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-128, 128, (2, 3, 64) if batched else (3, 64), dtype=I8, generator=g)
    w = torch.randint(-128, 128, (32, 64), dtype=I8, generator=g)
    scale = torch.rand(32, generator=g) * 0.01
    offset = (torch.rand(32, generator=g) - 0.5) * 20
    bias = torch.randint(-1000, 1000, (32,), dtype=I32, generator=g)
    return x, w, scale, offset, bias


@pytest.mark.parametrize("output_dtype", [torch.int8, torch.float16, torch.bfloat16, torch.int32])
def test_fullgraph_compile_matches_eager(output_dtype: torch.dtype) -> None:
    x, w, scale, offset, bias = _inputs(batched=output_dtype == torch.float16)
    use_offset = output_dtype == torch.int8

    def f(
        x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, o: torch.Tensor, b: torch.Tensor
    ) -> torch.Tensor:
        q = compat.trans_quant_param(s, o) if use_offset else s
        return compat.quant_matmul(
            x, w.t(), q, offset=o if use_offset else None, bias=b, output_dtype=output_dtype
        )

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    eager = f(x, w, scale, offset, bias)
    got = compiled(x, w, scale, offset, bias)
    assert got.dtype == eager.dtype == output_dtype
    assert torch.equal(got, eager)
