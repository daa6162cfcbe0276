"""Exact int8 x int8 -> int32 matrix products on any torch device.

|x1 @ x2| <= 128 * 128 * 65535 < 2**31 for every legal k, so the int32 result is exact
and cannot overflow; each backend below is exact for that range:

* CPU (and meta): ``torch._int_mm`` on 2-D operands (batch dims of x1 folded into m).
* CUDA: ``torch._int_mm`` where its shape rules hold, else float64 (integers below
  2**53 are exact whatever the summation order).
* anything else (MPS, XPU, ...): float32 products over chunks of k <= 1024, each chunk
  bounded by 2**24 and so exact, summed in int32.
"""

from __future__ import annotations

import torch

_FLOAT32_EXACT_CHUNK = 1024  # 128 * 128 * 1024 == 2**24


def int_matmul(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """``x1 @ x2`` for int8 operands with broadcast batch dims, as exact int32."""
    device = x1.device.type
    if device in ("cpu", "meta"):
        if x2.dim() == 2:
            return _int_mm_folded(x1, x2)
        return _batched_int_mm(x1, x2)
    if device == "cuda":
        if x2.dim() == 2 and _cuda_int_mm_ok(x1, x2):
            return _int_mm_folded(x1, x2)
        return torch.matmul(x1.to(torch.float64), x2.to(torch.float64)).to(torch.int32)
    return _chunked_float32(x1, x2)


def _int_mm_folded(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    k, n = x2.shape
    lead = x1.shape[:-1]
    out = torch._int_mm(x1.reshape(-1, k), x2)
    return out.reshape(*lead, n)


def _batched_int_mm(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
    a = x1.expand(*batch, *x1.shape[-2:]).reshape(-1, *x1.shape[-2:])
    b = x2.expand(*batch, *x2.shape[-2:]).reshape(-1, *x2.shape[-2:])
    out = torch.stack([torch._int_mm(a[i], b[i]) for i in range(a.shape[0])])
    return out.reshape(*batch, x1.shape[-2], x2.shape[-1])


def _cuda_int_mm_ok(x1: torch.Tensor, x2: torch.Tensor) -> bool:
    m = x1.numel() // x1.shape[-1]
    k, n = x2.shape
    return m > 16 and k % 8 == 0 and n % 8 == 0


def _chunked_float32(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    k = x1.shape[-1]
    total: torch.Tensor | None = None
    for start in range(0, k, _FLOAT32_EXACT_CHUNK):
        stop = min(start + _FLOAT32_EXACT_CHUNK, k)
        part = torch.matmul(
            x1[..., start:stop].to(torch.float32), x2[..., start:stop, :].to(torch.float32)
        ).to(torch.int32)
        total = part if total is None else total + part
    assert total is not None
    return total
