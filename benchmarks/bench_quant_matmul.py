"""Issue 6: ``compat.quant_matmul`` (CPU reference) against its baselines, per m.

Inputs as in ``bench_ops.py``: x (m, k) int8, weight (n, k) int8 passed as ``weight.t()``
(how LinearQuant calls the op), per-channel float32 scale, int32 bias, float16 output.
Every time is the median of interleaved rounds, all measured in the same run:

* ``compat``: ``compat.quant_matmul`` (validation, exact int32 product, full epilogue);
* ``kernel``: compat's exact int32 product alone (``compat.ops.intmm.int_matmul``);
* ``_int_mm``: raw ``torch._int_mm(x, weight.t())``, no epilogue;
* ``fbgemm``: ``torch.ops.quantized.linear_dynamic`` on a prepacked per-channel qint8
  weight (float input, quantized on the fly, ``reduce_range=True``): a reference only.
  It needs the qint8 tensor types that PyTorch deprecates, which compat never uses;
  their warnings are silenced here, locally;
* ``fp32``: float32 dequantize-then-matmul, ``x.float() @ (weight.float() * scale).t()``
  with the dequantized weight prepared once, outside the timing.

Then: 2-D against batched 3-D inputs (x (4, m/4, k) with the 2-D weight, folded into one
product; and with a batched x2 of four different weights (4, k, n), one product per
batch, each converting its own weight); and the int8-output path (int64 scale with a
folded offset). The candidate kernels themselves are compared by ``bench_kernels.py``.

Run: ``python benchmarks/bench_quant_matmul.py [--k 4096] [--n 4096] [--m 1 16 128 512]
[--rounds 5] [--threads N] [--kernel auto|float|int_mm]``. Ratios < 1 mean compat is
faster than the baseline.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch

import compat
from compat.ops import intmm

Fn = Callable[[], object]


def _busy_seconds() -> float | None:
    """CPU seconds all processes of this machine have used (Linux), else None."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / _HZ


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _sample(fn: Fn, count: int, patience: int) -> float:
    """Seconds per call of ``count`` calls; resampled (up to ``patience`` times) while
    other processes took more than 10% of the wall time in CPU time. Samples longer
    than a second are kept as they are (their retakes would cost too much)."""
    for attempt in range(patience + 1):
        busy0, own0, start = _busy_seconds(), time.process_time(), time.perf_counter()
        for _ in range(count):
            fn()
        wall = time.perf_counter() - start
        own, busy1 = time.process_time() - own0, _busy_seconds()
        if busy0 is None or busy1 is None or attempt == patience or wall > 1.0:
            return wall / count
        foreign = (busy1 - busy0) - own
        if foreign <= 0.1 * wall + 2.0 / _HZ:
            return wall / count
        time.sleep(0.2)
    raise AssertionError("unreachable")


def interleaved_ms(
    fns: dict[str, Fn], *, rounds: int = 5, min_time: float = 0.05, patience: int = 10
) -> dict[str, float]:
    """Median wall time (ms) of each function over :func:`interleaved_samples`."""
    samples = interleaved_samples(fns, rounds=rounds, min_time=min_time, patience=patience)
    return {name: statistics.median(values) for name, values in samples.items()}


def interleaved_samples(
    fns: dict[str, Fn], *, rounds: int = 5, min_time: float = 0.05, patience: int = 10
) -> dict[str, list[float]]:
    """Wall times (ms) of each function, one sample per round, sampled round-robin
    (alternating the order).

    The machines these run on are shared and noisy: interleaving puts every candidate
    under the same background load, and a sample during which other processes used the
    CPU is taken again (up to ``patience`` times; Linux only). Each sample repeats a
    function until it lasts ``min_time`` seconds.
    """
    inner: dict[str, int] = {}
    for name, fn in fns.items():
        fn()  # warm-up
        count = 1
        while True:
            start = time.perf_counter()
            for _ in range(count):
                fn()
            if time.perf_counter() - start >= min_time:
                break
            count *= 2
        inner[name] = count
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for i in range(rounds):
        # every other round in reverse order, so that no candidate always runs first
        for name in order if i % 2 == 0 else reversed(order):
            samples[name].append(_sample(fns[name], inner[name], patience) * 1e3)
    return samples


def machine_line() -> str:
    """One line naming the machine, for the record."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"torch {torch.__version__}, CPU {cpu} ({capability}), {torch.get_num_threads()} "
        f"threads, compat CPU kernel: {intmm.cpu_kernel()}"
    )


class Fbgemm:
    """``quantized::linear_dynamic`` with a per-channel qint8 weight (reference only)."""

    def __init__(self, w: torch.Tensor, scale: torch.Tensor) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zero = torch.zeros(w.shape[0], dtype=torch.int64)
            qw = torch._make_per_channel_quantized_tensor(w, scale.double(), zero, 0)
            self.packed = torch.ops.quantized.linear_prepack(qw, None)

    def __call__(self, x_f: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out: torch.Tensor = torch.ops.quantized.linear_dynamic(x_f, self.packed, True)
        return out


def row(cells: list[str]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def shape_parser(doc: str | None) -> argparse.ArgumentParser:
    """Argument parser with the issue's problem sizes: --k, --n (4096) and --m."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--m", type=int, nargs="+", default=[1, 16, 128, 512])
    return parser


def start(
    parser: argparse.ArgumentParser,
) -> tuple[argparse.Namespace, torch.Generator, torch.Tensor]:
    """Parse the arguments, apply ``--threads`` and make the seeded weight (n, k) int8."""
    args = parser.parse_args()
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(-128, 128, (args.n, args.k), dtype=torch.int8, generator=gen)
    return args, gen, w


def main() -> None:
    parser = shape_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--kernel", choices=intmm.CPU_KERNELS, default=None)
    parser.add_argument(
        "--patience",
        type=int,
        default=10,
        help="re-takes of a sample disturbed by other processes (0: accept every sample)",
    )
    parser.add_argument(
        "--skip-int-mm-above",
        type=int,
        default=10**9,
        metavar="M",
        help="skip the raw _int_mm baseline for m > M (it is very slow here)",
    )
    args, gen, w = start(parser)
    if args.kernel:
        intmm.set_cpu_kernel(args.kernel)
    k, n = args.k, args.n
    w_t = w.t()
    scale = torch.rand(n, generator=gen) * 1e-3
    bias = torch.randint(-(2**16), 2**16, (n,), dtype=torch.int32, generator=gen)
    offset = torch.randint(-20, 20, (n,), generator=gen).to(torch.float32)
    q = compat.trans_quant_param(scale, offset)
    w_deq_t = (w.float() * scale[:, None]).t().contiguous()
    fbgemm = Fbgemm(w, scale)
    print(machine_line())
    print(f"k = {k}, n = {n}; times in ms (median of {args.rounds} interleaved rounds)\n")

    print("A8W8 -> float16, per-channel float32 scale, int32 bias")
    print(
        row(
            [
                "m",
                "compat",
                "kernel",
                "_int_mm",
                "fbgemm",
                "fp32",
                "compat/_int_mm",
                "compat/fbgemm",
                "compat/best",
                "fp32/compat",
            ]
        )
    )
    print(row(["---"] * 10))
    for m in args.m:
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
        x_f = x.float()
        fns: dict[str, Fn] = {
            "compat": lambda x=x: compat.quant_matmul(
                x, w_t, scale, bias=bias, output_dtype=torch.float16
            ),
            "kernel": lambda x=x: intmm.int_matmul(x, w_t),
            "fbgemm": lambda x_f=x_f: fbgemm(x_f),
            "fp32": lambda x_f=x_f: torch.matmul(x_f, w_deq_t),
        }
        if m <= args.skip_int_mm_above:
            fns["_int_mm"] = lambda x=x: torch._int_mm(x, w_t)
        t = interleaved_ms(fns, rounds=args.rounds, patience=args.patience)
        t_int = t.get("_int_mm", float("nan"))
        best = min(t_int, t["fbgemm"]) if "_int_mm" in t else t["fbgemm"]
        print(
            row(
                [
                    str(m),
                    f"{t['compat']:.3f}",
                    f"{t['kernel']:.3f}",
                    f"{t_int:.3f}",
                    f"{t['fbgemm']:.3f}",
                    f"{t['fp32']:.3f}",
                    f"{t['compat'] / t_int:.2f}",
                    f"{t['compat'] / t['fbgemm']:.2f}",
                    f"{t['compat'] / best:.2f}",
                    f"{t['fp32'] / t['compat']:.2f}",
                ]
            ),
            flush=True,
        )

    print("\n2-D against batched 3-D input (float16 output), batch 4")
    print(
        row(
            [
                "m (total rows)",
                "2-D x",
                "3-D x, 2-D w",
                "3-D x, 3-D w",
                "3-D x / 2-D x",
                "3-D w / 2-D x",
            ]
        )
    )
    print(row(["---"] * 6))
    w3 = torch.randint(-128, 128, (4, n, k), dtype=torch.int8, generator=gen)
    w_t3 = w3.transpose(-2, -1)  # a batched x2: four different weights, each transposed
    for m in args.m:
        if m % 4:
            continue
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
        x3 = x.reshape(4, m // 4, k)
        t = interleaved_ms(
            {
                "2d": lambda x=x: compat.quant_matmul(
                    x, w_t, scale, bias=bias, output_dtype=torch.float16
                ),
                "3d": lambda x3=x3: compat.quant_matmul(
                    x3, w_t, scale, bias=bias, output_dtype=torch.float16
                ),
                "3d3d": lambda x3=x3: compat.quant_matmul(
                    x3, w_t3, scale, bias=bias, output_dtype=torch.float16
                ),
            },
            rounds=args.rounds,
            patience=args.patience,
        )
        print(
            row(
                [
                    str(m),
                    f"{t['2d']:.3f}",
                    f"{t['3d']:.3f}",
                    f"{t['3d3d']:.3f}",
                    f"{t['3d'] / t['2d']:.2f}",
                    f"{t['3d3d'] / t['2d']:.2f}",
                ]
            ),
            flush=True,
        )

    print("\nint8 output (int64 scale with folded offset, int32 bias) against float16 output")
    print(row(["m", "int8 out", "float16 out", "int8 / float16", "int8 / kernel"]))
    print(row(["---"] * 5))
    for m in args.m:
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
        t = interleaved_ms(
            {
                "int8": lambda x=x: compat.quant_matmul(x, w_t, q, bias=bias),
                "f16": lambda x=x: compat.quant_matmul(
                    x, w_t, q, bias=bias, output_dtype=torch.float16
                ),
                "kernel": lambda x=x: intmm.int_matmul(x, w_t),
            },
            rounds=args.rounds,
            patience=args.patience,
        )
        print(
            row(
                [
                    str(m),
                    f"{t['int8']:.3f}",
                    f"{t['f16']:.3f}",
                    f"{t['int8'] / t['f16']:.2f}",
                    f"{t['int8'] / t['kernel']:.2f}",
                ]
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
