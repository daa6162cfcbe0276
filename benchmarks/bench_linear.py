"""Issue 6: module-level costs of ``compat.LinearQuant`` (and ``compat.LinearA8W8Quant``).

1. Scale cache: forward with a float32 scale (encoded once, then cached) against
   forward with a pre-encoded int64 scale; target ratio <= 1.02 at m = 1, k = n = 256.
   The ratio is the median of per-round ratios (both sides measured back to back).
   For context, the upstream behaviour (re-encoding on every forward) is timed too.
2. ``torch.compile(module, fullgraph=True)``: compiled / eager forward time, per class,
   with the output checked bit for bit against eager first.

The adapter's own overhead (LinearA8W8Quant / LinearQuant forward and construction) is
measured by ``benchmarks/bench_adapter.py``. All modules here use float16 output, a
per-channel float32 scale and an int32 bias; times come from the interleaved,
load-rejecting sampler of ``bench_quant_matmul.py``.

Run: ``python benchmarks/bench_linear.py [--k 256] [--n 256] [--m 1] [--rounds 21]
[--threads N] [--compile-shapes 1x256x256 16x4096x4096] [--no-compile]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from bench_quant_matmul import interleaved_ms, interleaved_samples, machine_line, row

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


def scale_cache(k: int, n: int, m: int, rounds: int) -> None:
    # One module, one input: only the scale Parameter is swapped between the samples, so
    # that nothing but the scale's representation differs (two module objects differ by
    # +-2% here by themselves). Swapping back to the float Parameter hits its cache entry.
    module = _make(compat.LinearQuant, k, n)
    float_scale = module.scale
    int64_scale = torch.nn.Parameter(
        compat.trans_quant_param(float_scale.detach()), requires_grad=False
    )
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    w_t, bias = module.weight.t(), module.bias

    def with_scale(scale: torch.nn.Parameter) -> Callable[[], object]:
        def run() -> object:
            if module._parameters["scale"] is not scale:  # first call of a sample
                module.scale = scale
            return module(x)

        return run

    def upstream_style() -> object:  # what torch_npu's LinearQuant does: encode per call
        if module._parameters["scale"] is not float_scale:
            module.scale = float_scale
        module.clear_scale_cache()
        return module(x)

    first, second = with_scale(float_scale)(), with_scale(int64_scale)()
    reference = compat.quant_matmul(
        x, w_t, compat.trans_quant_param(float_scale), bias=bias, output_dtype=F16
    )
    for out in (first, second, upstream_style()):
        assert isinstance(out, torch.Tensor) and _same(out, reference)
    t = interleaved_samples(
        {
            "cached": with_scale(float_scale),
            "pre": with_scale(int64_scale),
            "upstream": upstream_style,
        },
        rounds=rounds,
        min_time=0.1,
    )
    med = {name: statistics.median(v) * 1e3 for name, v in t.items()}
    ratio = statistics.median(a / b for a, b in zip(t["cached"], t["pre"], strict=True))
    ratio_up = statistics.median(a / b for a, b in zip(t["upstream"], t["pre"], strict=True))
    print(f"\n1. scale cache (m = {m}, k = {k}, n = {n}), us per forward")
    print(
        row(
            [
                "float32 scale (cached)",
                "int64 scale",
                "re-encode per call",
                "cached / int64",
                "re-encode / int64",
                "target <= 1.02",
            ]
        )
    )
    print(row(["---"] * 6))
    cells = [f"{med['cached']:.1f}", f"{med['pre']:.1f}", f"{med['upstream']:.1f}"]
    cells += [f"{ratio:.3f}", f"{ratio_up:.3f}", "met" if ratio <= 1.02 else "NOT met"]
    print(row(cells))


def compiled(shapes: list[tuple[int, int, int]], rounds: int) -> None:
    print("\n2. torch.compile(module, fullgraph=True) against eager (CPU, inductor)")
    print(
        row(
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
    print(row(["---"] * 6))
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
                row(
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
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--compile-shapes", type=_shape, nargs="+", default=[(1, 256, 256), (16, 4096, 4096)]
    )
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    scale_cache(args.k, args.n, args.m, args.rounds)
    if not args.no_compile:
        with warnings.catch_warnings():
            # torch's inductor import warns about torch.jit.script_method (torch itself)
            warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated")
            compiled(args.compile_shapes, max(5, args.rounds // 3))


if __name__ == "__main__":
    main()
