"""Issue 13: ``compat.quant_matmul`` against the raw ``torch._int_mm`` it calls, per m.

x (m, k) int8 (or (4, m/4, k) for the 3-D rows, (1, 1, k) at m = 1), weight (n, k) int8
passed as ``weight.t()``, per-channel float32 scale, int32 bias; float16 and int8 output
fold the scale (fp19) and, for int8, an offset; bfloat16 uses the float32 scale. Every
row times, interleaved in the same run (median of ``--rounds`` rounds):

* ``compat``: ``compat.quant_matmul`` with the CPU kernel forced (``int_mm``) or ``auto``;
* ``raw w.t()``: ``torch._int_mm(x, weight.t())``, no epilogue;
* ``raw (k,n)``: ``torch._int_mm(x, weight.t().contiguous())`` (a copy made outside);
* ``raw swapped``: ``torch._int_mm(weight, x.t()).t().contiguous()``, the same product
  with the operands' roles swapped (no weight copy), transposed back;
* ``fp32``: ``x.float() @ w_dq.t() + bias``, w_dq dequantized once outside the timing.

``compat / best raw`` divides by the fastest raw layout (target <= 1.10), ``fp32 / compat``
is the speedup over float32 (target >= 5 at m >= 16 where VNNI/AMX is present).

Run: ``python benchmarks/bench_int_mm_overhead.py [--threads 1] [--rounds 5]
[--m 1 16 128 512] [--k 4096] [--n 4096]``.
"""

from __future__ import annotations

import statistics

import torch
from bench_quant_matmul import Fn, interleaved_ms, machine_line, row, shape_parser, start

import compat
from compat.ops import intmm

_OUTPUTS = (torch.float16, torch.bfloat16, torch.int8)
_FLAGS = ("avx2", "avx512_vnni", "amx_int8")


def cpu_flags() -> str:
    """Which of avx2, avx512_vnni and amx_int8 /proc/cpuinfo lists (Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        return "CPU flags: unknown (no /proc/cpuinfo)"
    return "CPU flags: " + ", ".join(
        f"{name} {'yes' if name in flags else 'no'}" for name in _FLAGS
    )


def operand(x: torch.Tensor, three_d: bool) -> torch.Tensor:
    """x (m, k) as passed to compat: itself, or (4, m/4, k) ((1, 1, k) at m < 4)."""
    m, k = x.shape
    return x.reshape(4 if m % 4 == 0 else 1, -1, k) if three_d else x


def main() -> None:
    parser = shape_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--patience", type=int, default=10)
    args, gen, w = start(parser)
    n = args.n
    scale = torch.rand(n, generator=gen) * 1e-3 + 1e-4
    offset = torch.randint(-8, 8, (n,), generator=gen).to(torch.float32)
    bias = torch.randint(-5000, 5000, (n,), dtype=torch.int32, generator=gen)
    wt, wkn = w.t(), w.t().contiguous()
    w_dq_t = (w.to(torch.float32) * scale[:, None]).t()
    bias_f = bias.to(torch.float32)
    auto = intmm.set_cpu_kernel("auto")
    intmm.set_cpu_kernel(auto)
    print(machine_line())
    print(cpu_flags() + f"; auto resolves to {auto}")
    # measure the int_mm layout once now, outside every timing
    intmm.set_cpu_kernel("int_mm")
    compat.quant_matmul(torch.ones(16, args.k, dtype=torch.int8), wt, scale, bias=bias)
    intmm.set_cpu_kernel(auto)
    print(
        f"int_mm layout: {intmm.int_mm_layout()}, swapped product measured faster here: "
        f"{intmm.swap_measured()}"
    )
    print(f"weight memory: {w.numel() / 2**20:.0f} MiB int8 ({n}x{args.k}); compat keeps no copy")
    print()
    print(
        row(
            [
                "m",
                "out",
                "x1",
                "kernel",
                "compat ms",
                "raw w.t() ms",
                "raw (k,n) ms",
                "raw swapped ms",
                "fp32 ms",
                "compat / best raw",
                "fp32 / compat",
            ]
        )
    )
    print(row(["---"] * 11))
    worst: list[float] = []
    for m in args.m:
        x = torch.randint(-128, 128, (m, args.k), dtype=torch.int8, generator=gen)
        for out in _OUTPUTS:
            kw: dict[str, object] = {"bias": bias, "output_dtype": out}
            if out == torch.int8:
                kw["offset"] = offset
            for three_d in (False, True):
                x1 = operand(x, three_d)
                for kernel in ("int_mm", "auto"):
                    intmm.set_cpu_kernel(kernel)
                    fns: dict[str, Fn] = {
                        "compat": lambda x1=x1, kw=kw: compat.quant_matmul(x1, wt, scale, **kw),  # type: ignore[arg-type]
                        "raw_t": lambda x=x: torch._int_mm(x, wt),
                        "raw_c": lambda x=x: torch._int_mm(x, wkn),
                        "raw_s": lambda x=x: torch._int_mm(w, x.t()).t().contiguous(),
                        "fp32": lambda x=x: torch.addmm(bias_f, x.to(torch.float32), w_dq_t),
                    }
                    t = interleaved_ms(fns, rounds=args.rounds, patience=args.patience)
                    best = min(t["raw_t"], t["raw_c"], t["raw_s"])
                    worst.append(t["compat"] / best)
                    print(
                        row(
                            [
                                str(m),
                                str(out).removeprefix("torch."),
                                "3-D" if three_d else "2-D",
                                kernel,
                                f"{t['compat']:.3f}",
                                f"{t['raw_t']:.3f}",
                                f"{t['raw_c']:.3f}",
                                f"{t['raw_s']:.3f}",
                                f"{t['fp32']:.2f}",
                                f"{t['compat'] / best:.2f}",
                                f"{t['fp32'] / t['compat']:.1f}",
                            ]
                        ),
                        flush=True,
                    )
    intmm.set_cpu_kernel(auto)
    print()
    print(
        f"compat / best raw: median {statistics.median(worst):.2f}, max {max(worst):.2f} "
        f"(target <= 1.10)"
    )


if __name__ == "__main__":
    main()
