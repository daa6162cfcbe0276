"""Benchmark ``python -m compat scan`` on a generated corpus; prints lines per second.

    python benchmarks/bench_scan.py                 # 250,000 lines, 1 and 2 workers
    python benchmarks/bench_scan.py --lines 1000000 --jobs 2 4 --repeat 5

The corpus is deterministic (seeded): model-like modules with imports, classes,
methods, docstrings and comments; about one file in eight uses LinearA8W8Quant in one
of the legacy forms. Timings include discovery, reading, the syntax check of every file,
parsing and analysis of the files that mention the class, and worker start-up. The
baseline, timed in the same run with the same worker counts (each scan followed by one
baseline run), reads the same files and
runs ``ast.parse`` on each (a linter that parses every file); the ratio printed is scan
rate / baseline rate. CPU model, usable cores and SIMD flags are printed first. Nothing
is asserted unless --min-rate is given.
"""

from __future__ import annotations

import argparse
import ast
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compat.scan import Excludes, discover, process_files  # noqa: E402

HEADER = '''"""{title}.

Generated benchmark module {index}: {words}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
'''

LEGACY_USES = [
    "from torch_npu.contrib.module import LinearA8W8Quant\n",
    "import torch_npu.contrib.module as npu_modules\n",
    "from compat import LinearA8W8Quant as Quant\n",
]
LEGACY_CALLS = [
    "        self.quant_{n} = LinearA8W8Quant({a}, {b}, False)\n",
    "        self.quant_{n} = npu_modules.LinearA8W8Quant({a}, {b}, bias=True, offset=True)\n",
    "        self.quant_{n} = Quant({a}, {b}, output_dtype=torch.float16)\n",
]

CLASS = '''

@dataclass
class {name}Config:
    """Configuration of :class:`{name}`."""

    hidden: int = {a}
    heads: int = {heads}
    dropout: float = 0.{drop}


class {name}(nn.Module):
    """A block with {heads} heads ({words})."""

    def __init__(self, config: {name}Config) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.hidden, {b})
        self.norm = nn.LayerNorm({b})
{extra}
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # scale before the projection; see the {words} note
        scale = 1.0 / math.sqrt(self.config.hidden)
        y = self.proj(x * scale)
        if mask is not None:
            y = y.masked_fill(mask, 0.0)
        for _ in range({heads}):
            y = torch.relu(self.norm(y)) + y
        return y

    def extra_repr(self) -> str:
        return f"hidden={{self.config.hidden}}, heads={{self.config.heads}}"


def build_{lower}(hidden: int = {a}) -> {name}:
    """Build a :class:`{name}` with defaults."""
    values = [i * {heads} for i in range(hidden) if i % 3 == 0]
    table = {{str(v): v for v in values}}
    return {name}({name}Config(hidden=hidden, heads=len(table) % 7 + 1))
'''

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def make_module(rng: random.Random, index: int, legacy: int | None) -> str:
    """Source of one generated module; *legacy* selects a legacy form (None: none)."""
    words = " ".join(rng.sample(WORDS, 4))
    parts = [HEADER.format(title=f"Module {index}", index=index, words=words)]
    if legacy is not None:
        parts.append(LEGACY_USES[legacy])
    for n in range(rng.randint(4, 9)):
        name = f"Block{index}x{n}"
        extra = ""
        if legacy is not None and n % 2 == 0:
            extra = LEGACY_CALLS[legacy].format(n=n, a=rng.randint(8, 512), b=rng.randint(8, 512))
        parts.append(
            CLASS.format(
                name=name,
                lower=name.lower(),
                a=rng.randint(8, 4096),
                b=rng.randint(8, 4096),
                heads=rng.randint(1, 16),
                drop=rng.randint(0, 9),
                words=words,
                extra=extra,
            )
        )
    return "".join(parts)


def make_corpus(directory: Path, min_lines: int, seed: int = 1234) -> tuple[int, int, int]:
    """Write modules under *directory* until *min_lines*; returns (files, lines, bytes)."""
    rng = random.Random(seed)
    files = lines = size = 0
    while lines < min_lines:
        package = directory / f"pkg{files // 50}"
        package.mkdir(exist_ok=True)
        legacy = rng.randrange(len(LEGACY_USES)) if rng.random() < 0.125 else None
        text = make_module(rng, files, legacy)
        (package / f"mod{files}.py").write_text(text, encoding="utf-8")
        files += 1
        lines += text.count("\n")
        size += len(text.encode("utf-8"))
    return files, lines, size


def measure(directory: Path, jobs: int, repeat: int) -> tuple[list[float], int, int]:
    """Wall times of *repeat* full scans, the line count and the number of findings."""
    times: list[float] = []
    lines = findings = 0
    for _ in range(repeat):
        started = time.perf_counter()
        paths, _ = discover([str(directory)], Excludes())
        results = process_files(paths, "scan", jobs)
        times.append(time.perf_counter() - started)
        lines = sum(r.lines for r in results)
        findings = sum(len(r.findings) for r in results)
    return times, lines, findings


def cpu_line() -> str:
    """CPU model, usable cores and the SIMD flags of this machine, on one line."""
    model, flags = "unknown CPU", []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = value.split()
    except OSError:
        pass
    simd = [f for f in flags if f.startswith(("sse", "ssse", "avx", "amx", "fma"))]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return f"cpu: {model}, {cores} usable cores; flags: {' '.join(simd) or 'n/a'}"


def _parse_chunk(paths: list[str]) -> int:
    """Read and ``ast.parse`` each file (the trees are dropped); returns the line count."""
    lines = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            with open(path, "rb") as handle:
                text = handle.read().decode("utf-8")
            ast.parse(text)
            lines += text.count("\n")
    return lines


def measure_parse(directory: Path, jobs: int, repeat: int) -> tuple[list[float], int]:
    """Wall times of *repeat* baseline runs (discovery, reading, ``ast.parse``)."""
    times: list[float] = []
    lines = 0
    for _ in range(repeat):
        started = time.perf_counter()
        paths, _ = discover([str(directory)], Excludes())
        if jobs <= 1:
            lines = _parse_chunk(paths)
        else:
            count = min(len(paths), jobs * 8)
            chunks = [paths[i::count] for i in range(count)]
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
                lines = sum(pool.map(_parse_chunk, chunks))
        times.append(time.perf_counter() - started)
    return times, lines


def main(argv: list[str] | None = None) -> int:
    """Generate the corpus, time the scans, print lines/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=250_000, help="corpus size (min lines)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="worker counts")
    parser.add_argument("--repeat", type=int, default=5, help="scans per worker count")
    parser.add_argument("--keep", type=Path, help="write the corpus here and keep it")
    parser.add_argument("--min-rate", type=float, help="exit 1 if the best 2-job rate is lower")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as temp:
        directory = args.keep or Path(temp)
        directory.mkdir(parents=True, exist_ok=True)
        files, lines, size = make_corpus(directory, args.lines)
        print(cpu_line())
        print(f"corpus: {files} files, {lines} lines, {size / 1e6:.1f} MB in {directory}")
        best_rate: dict[int, float] = {}
        for jobs in args.jobs:
            # interleaved, so that a busy neighbour slows both about equally
            times, base_times = [], []
            for _ in range(args.repeat):
                scan_time, scanned, findings = measure(directory, jobs, 1)
                base_time, parsed = measure_parse(directory, jobs, 1)
                times += scan_time
                base_times += base_time
            assert scanned == lines == parsed, (scanned, lines, parsed)
            best, median = min(times), statistics.median(times)
            base_best, base_median = min(base_times), statistics.median(base_times)
            best_rate[jobs] = lines / best
            print(
                f"jobs={jobs}: scan best {best:.3f}s ({lines / best:,.0f} lines/s), "
                f"median {median:.3f}s ({lines / median:,.0f} lines/s), {findings} findings"
            )
            print(
                f"jobs={jobs}: ast.parse best {base_best:.3f}s ({lines / base_best:,.0f} "
                f"lines/s), median {base_median:.3f}s ({lines / base_median:,.0f} lines/s)"
            )
            print(
                f"jobs={jobs}: ratio scan/ast.parse {base_best / best:.2f}x (best), "
                f"{base_median / median:.2f}x (median)"
            )
    if args.min_rate is not None and best_rate.get(2, 0.0) < args.min_rate:
        print(f"below --min-rate {args.min_rate:,.0f} lines/s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
