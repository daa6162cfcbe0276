"""Issue 6: module-level overheads of ``compat.LinearQuant`` / ``compat.LinearA8W8Quant``.

1. Scale cache: forward with a float32 scale (encoded once, then cached) against
   forward with a pre-encoded int64 scale; target ratio <= 1.02 at m = 1, k = n = 256.
   For context, the upstream behaviour (re-encoding on every forward) is timed too.
2. Adapter: LinearA8W8Quant forward / LinearQuant forward (target <= 1.02, m = 1,
   k = n = 256) and the construction-time ratio (the deprecation warning is silenced,
   but its machinery still runs).
3. ``torch.compile(module, fullgraph=True)``: compiled / eager forward time, per class.

All modules use float16 output, a per-channel float32 scale and an int32 bias. Times are
medians of interleaved rounds measured in the same run (see ``bench_quant_matmul.py``).

Run: ``python benchmarks/bench_linear.py [--k 256] [--n 256] [--m 1] [--rounds 15]
[--compile-shapes 1x256x256 16x4096x4096] [--no-compile]``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
from bench_quant_matmul import interleaved_ms, machine_line

import compat

F16 = torch.float16


def _adapter_class() -> type[torch.nn.Module] | None:
    cls: type[torch.nn.Module] | None = getattr(compat, "LinearA8W8Quant", None)
    return cls


def _make(cls: type[torch.nn.Module], k: int, n: int, seed: int = 0) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LinearA8W8Quant's deprecation warning
        m = cls(k, n, output_dtype=F16)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.weight.copy_(torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g))
        m.scale.copy_(torch.rand(n, generator=g) * 1e-3)
        m.bias.copy_(torch.randint(-(2**16), 2**16, (n,), dtype=torch.int32, generator=g))
    return m


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def scale_cache(k: int, n: int, m: int, rounds: int) -> None:
    cached = _make(compat.LinearQuant, k, n)
    pre = _make(compat.LinearQuant, k, n)
    pre.scale = torch.nn.Parameter(
        compat.trans_quant_param(pre.scale.detach()), requires_grad=False
    )
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    w_t, bias = cached.weight.t(), cached.bias

    def upstream_style() -> torch.Tensor:  # what torch_npu's LinearQuant does per call
        q = compat.trans_quant_param(cached.scale)
        return compat.quant_matmul(x, w_t, q, bias=bias, output_dtype=F16)

    assert _same(cached(x), pre(x)) and _same(cached(x), upstream_style())
    t = interleaved_ms(
        {"cached": lambda: cached(x), "pre": lambda: pre(x), "upstream": upstream_style},
        rounds=rounds,
        min_time=0.1,
    )
    print(f"\n1. scale cache (m = {m}, k = {k}, n = {n}), us per forward")
    print(
        _row(
            [
                "float32 scale (cached)",
                "int64 scale",
                "re-encode per call",
                "cached / int64",
                "re-encode / int64",
            ]
        )
    )
    print(_row(["---"] * 5))
    print(
        _row(
            [
                f"{t['cached'] * 1e3:.1f}",
                f"{t['pre'] * 1e3:.1f}",
                f"{t['upstream'] * 1e3:.1f}",
                f"{t['cached'] / t['pre']:.3f}",
                f"{t['upstream'] / t['pre']:.3f}",
            ]
        )
    )


def adapter(k: int, n: int, m: int, rounds: int) -> None:
    cls = _adapter_class()
    print(f"\n2. adapter (m = {m}, k = {k}, n = {n})")
    if cls is None:
        print("compat.LinearA8W8Quant is not available in this checkout: skipped")
        return
    new = _make(compat.LinearQuant, k, n)
    old = _make(cls, k, n)
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    assert _same(new(x), old(x))

    def build(c: type[torch.nn.Module]) -> Callable[[], object]:
        def run() -> object:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return c(k, n, output_dtype=F16)

        return run

    t = interleaved_ms(
        {
            "fwd_new": lambda: new(x),
            "fwd_old": lambda: old(x),
            "init_new": build(compat.LinearQuant),
            "init_old": build(cls),
        },
        rounds=rounds,
        min_time=0.1,
    )
    print(_row(["", "LinearQuant (us)", "LinearA8W8Quant (us)", "A8W8 / LinearQuant"]))
    print(_row(["---"] * 4))
    for label, a, b in (
        ("forward", "fwd_new", "fwd_old"),
        ("construction", "init_new", "init_old"),
    ):
        print(_row([label, f"{t[a] * 1e3:.1f}", f"{t[b] * 1e3:.1f}", f"{t[b] / t[a]:.3f}"]))


def compiled(shapes: list[tuple[int, int, int]], rounds: int) -> None:
    print("\n3. torch.compile(module, fullgraph=True) against eager (CPU, inductor)")
    print(
        _row(
            [
                "class",
                "m x k x n",
                "eager (ms)",
                "compiled (ms)",
                "compiled / eager",
                "compile time (s)",
            ]
        )
    )
    print(_row(["---"] * 6))
    classes: list[type[torch.nn.Module]] = [compat.LinearQuant]
    cls = _adapter_class()
    if cls is not None:
        classes.append(cls)
    for m, k, n in shapes:
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8)
        for c in classes:
            torch._dynamo.reset()
            module = _make(c, k, n)
            fast = torch.compile(module, fullgraph=True)
            start = time.perf_counter()
            out = fast(x)
            compile_s = time.perf_counter() - start
            assert _same(out, module(x)), "compiled output differs from eager"
            t = interleaved_ms(
                {
                    "eager": lambda module=module, x=x: module(x),
                    "compiled": lambda fast=fast, x=x: fast(x),
                },
                rounds=rounds,
                min_time=0.1,
            )
            print(
                _row(
                    [
                        c.__name__,
                        f"{m}x{k}x{n}",
                        f"{t['eager']:.3f}",
                        f"{t['compiled']:.3f}",
                        f"{t['compiled'] / t['eager']:.2f}",
                        f"{compile_s:.1f}",
                    ]
                ),
                flush=True,
            )


def _shape(text: str) -> tuple[int, int, int]:
    m, k, n = (int(v) for v in text.lower().split("x"))
    return m, k, n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--m", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--compile-shapes", type=_shape, nargs="+", default=[(1, 256, 256), (16, 4096, 4096)]
    )
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    print(machine_line())
    scale_cache(args.k, args.n, args.m, args.rounds)
    adapter(args.k, args.n, args.m, args.rounds)
    if not args.no_compile:
        with warnings.catch_warnings():
            # torch's inductor import warns about torch.jit.script_method (torch itself)
            warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated")
            compiled(args.compile_shapes, max(5, args.rounds // 3))


if __name__ == "__main__":
    main()
