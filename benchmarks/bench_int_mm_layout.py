"""Issue 13: the layouts of ``torch._int_mm`` for ``x @ weight.t()``, per m and weight size.

``x`` (m, k) int8, ``weight`` (n, k) int8 contiguous (how LinearQuant stores it):

* ``direct``: ``torch._int_mm(x, weight.t())`` (the baseline, what compat ran before);
* ``swapped``: ``torch._int_mm(weight, x.t()).t().contiguous()``, the same product with
  the operands' roles swapped, transposed back (no weight copy);
* ``(k,n) copy``: ``torch._int_mm(x, weight.t().contiguous())``, a contiguous copy made
  outside the timing (it doubles weight memory; compat does not keep one).

Interleaved in one run (median of ``--rounds`` rounds); ratios are against ``direct``.
The compat kernel's ``auto`` layout swaps for 2 <= m <= 256 and weights of at least
2**22 elements where its own one-time measurement (printed) finds the swap faster.

Run: ``python benchmarks/bench_int_mm_layout.py [--threads 1] [--rounds 5]
[--m 1 2 4 16 64 256 512] [--sizes 1024 2048 4096]``.
"""

from __future__ import annotations

import argparse

import torch
from bench_int_mm_overhead import cpu_flags
from bench_quant_matmul import Fn, interleaved_ms, machine_line, row

from compat.ops import intmm


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 16, 64, 256, 512])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--patience", type=int, default=10)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    print(cpu_flags())
    previous = intmm.set_cpu_kernel("int_mm")  # one eligible product makes auto measure
    probe = torch.ones(2048, 2048, dtype=torch.int8)
    intmm.int_matmul(torch.ones(16, 2048, dtype=torch.int8), probe.t())
    intmm.set_cpu_kernel(previous)
    print(f"compat's auto verdict here (swap measured faster): {intmm.swap_measured()}")
    print()
    print(row(["k = n", "m", "direct ms", "swapped ms", "(k,n) copy ms", "swapped / direct",
               "copy / direct"]))  # fmt: skip
    print(row(["---"] * 7))
    gen = torch.Generator().manual_seed(0)
    for size in args.sizes:
        w = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=gen)
        wkn = w.t().contiguous()
        for m in args.m:
            x = torch.randint(-128, 128, (m, size), dtype=torch.int8, generator=gen)
            want = torch._int_mm(x, w.t())
            swapped = torch._int_mm(w, x.t()).t().contiguous()
            assert torch.equal(swapped, want) and torch.equal(torch._int_mm(x, wkn), want)
            fns: dict[str, Fn] = {
                "direct": lambda x=x, w=w: torch._int_mm(x, w.t()),
                "swapped": lambda x=x, w=w: torch._int_mm(w, x.t()).t().contiguous(),
                "copy": lambda x=x, wkn=wkn: torch._int_mm(x, wkn),
            }
            t = interleaved_ms(fns, rounds=args.rounds, patience=args.patience)
            print(
                row(
                    [
                        str(size),
                        str(m),
                        f"{t['direct']:.3f}",
                        f"{t['swapped']:.3f}",
                        f"{t['copy']:.3f}",
                        f"{t['swapped'] / t['direct']:.2f}",
                        f"{t['copy'] / t['direct']:.2f}",
                    ]
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
