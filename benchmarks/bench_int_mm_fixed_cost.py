"""Issue 13: where ``compat.quant_matmul``'s per-call cost goes, apart from the GEMM.

A8W8 -> float16, x (1, k) int8, weight (n, k) int8 passed as ``weight.t()``, per-channel
float32 scale, int32 bias, the ``int_mm`` CPU kernel forced. Interleaved in one run
(median of ``--rounds``), each piece through the public functions of
``compat.ops.reference``:

* ``raw``: ``torch._int_mm(x, weight.t())`` (the baseline);
* ``accumulate``: the exact int32 product as compat runs it;
* ``accumulate + epilogue``: plus the epilogue (scale and bias terms prepared outside);
* ``reference``: ``reference_quant_matmul`` (adds the scale fold and the bias range check);
* ``quant_matmul``: the public op (adds argument validation).

Each row prints its time and its cost over ``raw`` in µs. Use a small k (default 64) to
see the fixed cost; at k = 4096 it is a few per cent of the call.

Run: ``python benchmarks/bench_int_mm_fixed_cost.py [--k 64] [--n 4096] [--threads 1]``.
"""

from __future__ import annotations

import torch
from bench_int_mm_overhead import cpu_flags
from bench_quant_matmul import Fn, interleaved_ms, machine_line, shape_parser, start

import compat
from compat.ops import intmm
from compat.ops.reference import (
    accumulate,
    effective_scale,
    epilogue,
    reference_quant_matmul,
    wrap_terms,
)
from compat.ops.schemes import A8W8


def main() -> None:
    parser = shape_parser(__doc__)
    parser.set_defaults(k=64, m=[1])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    args, gen, w = start(parser)
    n, out = args.n, torch.float16
    x = torch.randint(-128, 128, (args.m[0], args.k), dtype=torch.int8, generator=gen)
    wt = w.t()
    scale = torch.rand(n, generator=gen) * 1e-3 + 1e-4
    bias = torch.randint(-5000, 5000, (n,), dtype=torch.int32, generator=gen)
    s, off = effective_scale(scale, None, output_dtype=out, has_pertoken=False)
    terms = wrap_terms(bias)
    previous = intmm.set_cpu_kernel("int_mm")

    def acc_epilogue() -> torch.Tensor:
        acc = accumulate(x, wt, scheme=A8W8, x2_transposed=True)
        return epilogue(acc, s, off, None, int_bias=terms, float_bias=None, out=out)

    fns: dict[str, Fn] = {
        "raw": lambda: torch._int_mm(x, wt),
        "accumulate": lambda: accumulate(x, wt, scheme=A8W8, x2_transposed=True),
        "accumulate + epilogue": acc_epilogue,
        "reference": lambda: reference_quant_matmul(
            x,
            wt,
            scale,
            offset=None,
            pertoken_scale=None,
            bias=bias,
            output_dtype=out,
            x2_transposed=True,
        ),
        "quant_matmul": lambda: compat.quant_matmul(x, wt, scale, bias=bias, output_dtype=out),
    }
    print(machine_line())
    print(cpu_flags())
    print(f"m = {args.m[0]}, k = {args.k}, n = {n}, float16 output, int_mm kernel forced")
    t = interleaved_ms(fns, rounds=args.rounds, min_time=0.1, patience=0)
    intmm.set_cpu_kernel(previous)
    base = t["raw"]
    print(f"{'':24}{'µs':>10}{'over raw µs':>14}{'/ raw':>8}")
    for name, ms in t.items():
        print(f"{name:24}{ms * 1e3:10.1f}{(ms - base) * 1e3:14.1f}{ms / base:8.2f}")


if __name__ == "__main__":
    main()
