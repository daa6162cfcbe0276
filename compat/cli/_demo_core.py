"""Demo section: a 3-layer MLP of LinearQuant with int8, float16 and bfloat16 outputs."""

from __future__ import annotations

import argparse
import time

import torch

from compat import LinearQuant
from compat.cli._demo_oracle import linear64, tolerance
from compat.ops.backend import active_backend


def _layer(
    gen: torch.Generator,
    k: int,
    n: int,
    output_dtype: torch.dtype,
    *,
    offset: bool,
    device: str,
) -> LinearQuant:
    layer = LinearQuant(k, n, bias=True, offset=offset, output_dtype=output_dtype, device=device)
    acc_std = (k**0.5) * 74.0 * 74.0  # std of a sum of k products of uniform int8
    with torch.no_grad():
        layer.weight.copy_(torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen))
        layer.scale.copy_((torch.rand(n, generator=gen) + 0.5) * (40.0 / acc_std))
        layer.bias.copy_(torch.randint(-2000, 2000, (n,), dtype=torch.int32, generator=gen))
        if layer.offset is not None:
            layer.offset.copy_(torch.randn(n, generator=gen) * 10.0)
    return layer


def _requantize(y: torch.Tensor, act_scale: float) -> torch.Tensor:
    """ReLU, then symmetric int8 quantization of an activation (a plain float op)."""
    return torch.round(y.float().relu() / act_scale).clamp(-128, 127).to(torch.int8)


def run_section(args: argparse.Namespace) -> bool:
    device = args.device
    gen = torch.Generator().manual_seed(args.seed)
    layers = [
        ("fc1", _layer(gen, 64, 128, torch.int8, offset=True, device=device), True),
        ("fc2", _layer(gen, 128, 96, torch.float16, offset=False, device=device), True),
        ("fc3", _layer(gen, 96, 32, torch.bfloat16, offset=False, device=device), False),
    ]
    x = torch.randint(-128, 128, (8, 64), dtype=torch.int8, generator=gen).to(device)
    print(f"backend: {active_backend(device)} on {device}")
    print(f"{'layer':<6} {'output dtype':<15} {'shape':<10} ", end="")
    print(f"{'max |diff|':>11} {'allowed':>9} {'time ms':>8}")
    ok = True
    for name, layer, truncated in layers:
        layer(x)  # warm-up: the first call pays one-off kernel set-up
        start = time.perf_counter()
        y = layer(x)
        elapsed = (time.perf_counter() - start) * 1e3
        y64 = linear64(
            x.cpu(),
            layer.weight.cpu(),
            layer.scale.cpu(),
            layer.bias.cpu() if layer.bias is not None else None,
            layer.offset.cpu() if layer.offset is not None else None,
            layer.output_dtype or torch.int8,
            truncate_scale=truncated,
        )
        diff = (y.cpu().to(torch.float64) - y64).abs()
        tol = tolerance(y64, layer.output_dtype or torch.int8)
        good = bool((diff <= tol).all()) and y.dtype == (layer.output_dtype or torch.int8)
        ok &= good
        shape = "x".join(map(str, y.shape))
        print(
            f"{name:<6} {y.dtype!s:<15} {shape:<10} {diff.max().item():>11.4g} "
            f"{tol.max().item():>9.3g} {elapsed:>8.3f}{'' if good else '  MISMATCH'}"
        )
        x = y if y.dtype == torch.int8 else _requantize(y, act_scale=0.25)
    return ok
