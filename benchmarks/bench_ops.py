"""Time ``compat.quant_matmul`` (int8 -> float16, per-channel scale, int32 bias).

Baselines, measured in the same run on the same inputs:
  * raw ``torch._int_mm`` (int8 x int8 -> int32, no epilogue);
  * float32 dequantize-then-matmul: ``(x.float() @ (w.float() * scale).T)``.

Run: ``python benchmarks/bench_ops.py [--k 4096] [--n 4096] [--m 1 16 128 512]``.
Ratios < 1 mean compat is faster than the baseline.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import median_ms
from bench_quant_matmul import shape_parser

import compat


def main() -> None:
    parser = shape_parser(__doc__)
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args()
    k, n = args.k, args.n
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    scale = torch.rand(n, generator=gen) * 1e-3
    bias = torch.randint(-(2**16), 2**16, (n,), dtype=torch.int32, generator=gen)
    w_t = w.t()
    w_f32_t = (w.float() * scale[:, None]).t().contiguous()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, k = {k}, n = {n}")
    cols = ("compat ms", "_int_mm ms", "fp32 ms", "vs _int_mm", "vs fp32")
    print(f"{'m':>5} " + " ".join(f"{c:>11}" for c in cols))
    for m in args.m:
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
        x_f = x.float()

        def run_compat(x: torch.Tensor = x) -> torch.Tensor:
            return compat.quant_matmul(x, w_t, scale, bias=bias, output_dtype=torch.float16)

        def run_int_mm(x: torch.Tensor = x) -> torch.Tensor:
            return torch._int_mm(x, w_t)

        def run_fp32(x_f: torch.Tensor = x_f) -> torch.Tensor:
            return torch.matmul(x_f, w_f32_t)

        t_c = median_ms(run_compat, repeat=args.repeat, min_time=0.05)
        t_i = median_ms(run_int_mm, repeat=args.repeat, min_time=0.05)
        t_f = median_ms(run_fp32, repeat=args.repeat, min_time=0.05)
        print(
            f"{m:>5} {t_c:>10.3f} {t_i:>11.3f} {t_f:>9.3f} {t_c / t_i:>10.2f}x {t_c / t_f:>8.2f}x"
        )


if __name__ == "__main__":
    main()
