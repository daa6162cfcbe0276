"""Demo section: a 3-layer MLP of LinearQuant with int8, float16 and bfloat16 outputs,
checked bit for bit against golden vectors computed by an independent oracle."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from compat import LinearQuant
from compat.cli import _demo_golden
from compat.ops.backend import active_backend


def build_layer(entry: dict[str, Any], device: str) -> LinearQuant:
    """A LinearQuant holding one golden layer's parameters."""
    out = getattr(torch, entry["output_dtype"])
    layer = LinearQuant(
        entry["in_features"],
        entry["out_features"],
        bias=True,
        offset="offset" in entry,
        output_dtype=out,
        device=device,
    )
    with torch.no_grad():
        for name in ("weight", "scale", "bias", "offset"):
            if name in entry:
                setattr(
                    layer,
                    name,
                    torch.nn.Parameter(
                        _demo_golden.tensor(entry[name]).to(device), requires_grad=False
                    ),
                )
    return layer


def print_header() -> None:
    print(
        f"{'layer':<6} {'output dtype':<15} {'shape':<10} {'result':<22} {'max |diff|':>10} ",
        end="",
    )
    print(f"{'time ms':>8}")


def check(name: str, layer: torch.nn.Module, entry: dict[str, Any], device: str) -> bool:
    """Run ``layer`` on the golden input; compare with the golden output; print a row."""
    x = _demo_golden.tensor(entry["x"]).to(device)
    layer(x)  # warm-up: the first call pays one-off kernel set-up
    start = time.perf_counter()
    y = layer(x)
    elapsed = (time.perf_counter() - start) * 1e3
    want = _demo_golden.tensor(entry["expected"])
    ok, differing, diff = _demo_golden.compare(y, want)
    result = "bit-identical" if ok else f"MISMATCH ({differing} of {want.numel()})"
    shape = "x".join(map(str, y.shape))
    print(f"{name:<6} {y.dtype!s:<15} {shape:<10} {result:<22} {diff:>10.4g} {elapsed:>8.3f}")
    return ok


def run_section(args: argparse.Namespace) -> bool:
    device = args.device
    print(f"backend: {active_backend(device)} on {device}; expected outputs: golden vectors")
    print_header()
    ok = True
    for entry in _demo_golden.load()["core"]:
        ok &= check(entry["name"], build_layer(entry, device), entry, device)
    return ok
