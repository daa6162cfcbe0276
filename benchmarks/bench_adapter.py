"""Cost of the LinearA8W8Quant adapter over LinearQuant (forward and construction).

Both modules hold the same parameters; the forward ratio is
``LinearA8W8Quant forward time / LinearQuant forward time`` at m=1, k=n=256 (target:
<= 1.02), the construction ratio the same for ``__init__`` (the adapter maps legacy
arguments and reports the deprecated use; the warning itself is shown once per site,
so repeated constructions at one site pay the bookkeeping, not the printing).

Timings interleave the two modules round by round and report the median of the
per-round ratios, so a machine busy with something else slows both sides alike.

Run: ``python benchmarks/bench_adapter.py [--m 1] [--k 256] [--n 256] [--rounds 41]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from compat import LinearA8W8Quant, LinearQuant


def _time_per_call(fn: Callable[[], object], inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def _calibrate(fn: Callable[[], object], min_time: float) -> int:
    inner = 1
    while _time_per_call(fn, inner) * inner < min_time:
        inner *= 2
    return inner


def paired(
    a: Callable[[], object], b: Callable[[], object], rounds: int, min_time: float
) -> tuple[float, float, float]:
    """Median time of ``a`` and ``b`` (microseconds) and the median of per-round a/b."""
    for _ in range(3):
        a(), b()
    inner = max(_calibrate(a, min_time), _calibrate(b, min_time))
    ta, tb, ratios = [], [], []
    for _ in range(rounds):
        x = _time_per_call(a, inner)
        y = _time_per_call(b, inner)
        ta.append(x)
        tb.append(y)
        ratios.append(x / y)
    return statistics.median(ta) * 1e6, statistics.median(tb) * 1e6, statistics.median(ratios)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--m", type=int, default=1)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--min-time", type=float, default=0.02, help="seconds per sample")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    m, k, n = args.m, args.k, args.n

    with warnings.catch_warnings(record=True):  # keep the one deprecation message quiet
        warnings.simplefilter("default")
        legacy = LinearA8W8Quant(k, n, True, True)  # variant A1 form: bias, offset
    plain = LinearQuant(k, n, bias=True, offset=True, output_dtype=torch.int8)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        plain.weight.copy_(torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen))
        plain.scale.copy_(torch.rand(n, generator=gen) * 1e-3)
        plain.offset.copy_(torch.randn(n, generator=gen))
        plain.bias.copy_(torch.randint(-1000, 1000, (n,), dtype=torch.int32, generator=gen))
    legacy.load_state_dict(plain.state_dict())
    x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    if not torch.equal(legacy(x), plain(x)):
        print("error: outputs differ")
        return 1

    with torch.inference_mode():
        fa, fb, f_ratio = paired(lambda: legacy(x), lambda: plain(x), args.rounds, args.min_time)

    def build_legacy() -> object:
        return LinearA8W8Quant(k, n, True, True)

    def build_plain() -> object:
        return LinearQuant(k, n, bias=True, offset=True, output_dtype=torch.int8)

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        ca, cb, c_ratio = paired(
            build_legacy, build_plain, max(11, args.rounds // 4), args.min_time
        )
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, m={m} k={k} n={n}")
    print(f"{'':<14}{'LinearA8W8Quant us':>20}{'LinearQuant us':>16}{'ratio':>8}")
    print(f"{'forward':<14}{fa:>20.2f}{fb:>16.2f}{f_ratio:>8.3f}")
    print(f"{'construction':<14}{ca:>20.2f}{cb:>16.2f}{c_ratio:>8.3f}")
    print(f"(deprecation warnings shown during the construction timing: {len(shown)})")
    verdict = "OK" if f_ratio <= 1.02 else "ABOVE TARGET"
    print(f"forward ratio {f_ratio:.3f} (target <= 1.02): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
