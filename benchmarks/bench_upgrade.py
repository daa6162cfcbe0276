"""Benchmark: ``python -m compat upgrade`` on synthetic legacy checkpoints of >= 1 GB.

    python benchmarks/bench_upgrade.py [--size-gb 1.1] [--repeat 3] [--dir DIR] [--json]
    python benchmarks/bench_upgrade.py --jobs [bench_upgrade_jobs.py options]

``--jobs`` runs the shard-parallel benchmark of issue 14 instead (``--jobs 1`` vs
``--jobs 2`` vs ``cp -r`` on a >= 2 GB, 8-shard checkpoint): see bench_upgrade_jobs.py.

For each case it writes a legacy checkpoint, then measures in fresh subprocesses, in
the same run and alternating so that the page cache treats both alike:

* baseline: ``torch.load(SRC)`` + ``torch.save(obj, OUT)`` (plain, no fsync); for
  safetensors ``safetensors.torch.load_file`` + ``save_file``;
* upgrade:  ``python -m compat upgrade SRC DST`` (CRC check, upgrade, write, fsync,
  verify by reloading, atomic rename);
* ``python -c "import torch, compat.checkpoint"``: the interpreter's own footprint.

Wall time and peak RSS of each child come from ``resource.getrusage(RUSAGE_CHILDREN)``
read by a small wrapper process around that one child. Reported: the median time ratio
upgrade/baseline, peak RSS / file size (absolute, and net of the interpreter's own RSS),
and for safetensors peak RSS against the largest tensor. Targets (issue 4): time <=
1.3x baseline; RSS <= 1.2x the file (safetensors: <= largest tensor + 10%).

Cases: F4 torch (float32 weights holding int8 values -> int8: 3/4 of the bytes shrink),
F2 torch (int8 weights kept, torchair int64 scales decoded for bfloat16 output: almost
every byte unchanged, the worst case for the ratio), F4 safetensors, and (issue 14) F4 and
F2 as ``torch.distributed.checkpoint`` directories (baseline: ``dcp.load`` into
preallocated tensors + ``dcp.save``; target: peak RSS <= the largest tensor + 10 %, net of
the interpreter). Free disk space is
checked before anything is written (about 3.5x the size is needed at the peak) and
every file is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30

_MEASURE = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL)
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": done.returncode, "wall": wall, "peak": peak}))
"""

_BASELINE = "import sys, torch; torch.save(torch.load(sys.argv[1], weights_only=True), sys.argv[2])"
# the plain load + save of the safetensors format itself
_BASELINE_ST = (
    "import sys; from safetensors.torch import load_file, save_file; "
    "save_file(load_file(sys.argv[1]), sys.argv[2])"
)


_BASELINE_DCP = (
    "import sys, warnings, torch; import torch.distributed.checkpoint as dcp; "
    "warnings.simplefilter('ignore'); "
    "from torch.distributed.checkpoint.filesystem import FileSystemReader; "
    "meta = FileSystemReader(sys.argv[1]).read_metadata(); "
    "sd = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) "
    "for k, v in meta.state_dict_metadata.items()}; "
    "dcp.load(sd, checkpoint_id=sys.argv[1]); dcp.save(sd, checkpoint_id=sys.argv[2])"
)


def measure(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd`` under a fresh wrapper; its wall time and peak RSS."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(cmd)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {result['rc']}")
    return result


def _layers(total_bytes: int, per_layer_bytes: int) -> int:
    return max(1, -(-total_bytes // per_layer_bytes))


def _save_as(sd: dict[str, torch.Tensor], path: Path, form: str) -> None:
    if form == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    elif form == "dcp":
        import warnings

        import torch.distributed.checkpoint as dcp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
            dcp.save(sd, checkpoint_id=str(path))
    else:
        torch.save(sd, path)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def make_f4(path: Path, size: int, *, form: str) -> int:
    """Float32 weights holding int8 values (a plain load into upstream's parameters)."""
    n = k = 8192  # 256 MiB float32 per weight
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    for i in range(_layers(size, n * k * 4)):
        sd[f"layers.{i}.weight"] = torch.randint(
            -128, 128, (n, k), dtype=torch.int8, generator=g
        ).float()
        sd[f"layers.{i}.scale"] = torch.rand(n, generator=g) * 1e-3
        sd[f"layers.{i}.bias"] = torch.randint(-1000, 1000, (n,), dtype=torch.int32, generator=g)
    _save_as(sd, path, form)
    return n * k * 4


def make_f2(path: Path, size: int, *, form: str) -> int:
    """torchair-converted: int8 weights, int64 scales (decoded for bfloat16 output)."""
    n = k = 8192  # 64 MiB int8 per weight
    g = torch.Generator().manual_seed(1)
    sd: dict[str, torch.Tensor] = {}
    for i in range(_layers(size, n * k)):
        sd[f"layers.{i}.weight"] = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
        bits = (torch.rand(n, generator=g) * 1e-3).view(torch.int32).to(torch.int64) & 0xFFFFE000
        sd[f"layers.{i}.scale"] = bits | (1 << 46)
        sd[f"layers.{i}.bias"] = torch.randint(-1000, 1000, (n,), dtype=torch.int32, generator=g)
    _save_as(sd, path, form)
    return n * k


def run_case(
    name: str, src: Path, largest: int, extra: list[str], repeat: int, idle: int
) -> dict[str, Any]:
    size = _size(src)
    base_out, dst = (
        src.with_name("baseline_out" + src.suffix),
        src.with_name("upgraded" + src.suffix),
    )
    upgrade = [
        sys.executable,
        "-m",
        "compat",
        "upgrade",
        str(src),
        str(dst),
        "--progress",
        "never",
        *extra,
    ]
    code = {".safetensors": _BASELINE_ST, ".dcp": _BASELINE_DCP}.get(src.suffix, _BASELINE)
    baseline = [sys.executable, "-c", code, str(src), str(base_out)]
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "upgrade": []}
    for _ in range(repeat):
        for label, cmd, out in (("baseline", baseline, base_out), ("upgrade", upgrade, dst)):
            runs[label].append(measure(cmd))
            _remove(out)
    t_base = statistics.median(r["wall"] for r in runs["baseline"])
    t_up = statistics.median(r["wall"] for r in runs["upgrade"])
    peak = max(r["peak"] for r in runs["upgrade"])
    peak_base = max(r["peak"] for r in runs["baseline"])
    return {
        "case": name,
        "file_bytes": size,
        "largest_tensor_bytes": largest,
        "baseline_s": round(t_base, 3),
        "upgrade_s": round(t_up, 3),
        "time_ratio": round(t_up / t_base, 3),
        "baseline_peak_rss": peak_base,
        "upgrade_peak_rss": peak,
        "rss_over_file": round(peak / size, 3),
        "net_rss_over_file": round((peak - idle) / size, 3),
        "rss_over_largest": round(peak / largest, 3),
        "net_rss_over_largest": round((peak - idle) / largest, 3),
        "upgrade_runs_s": [round(r["wall"], 3) for r in runs["upgrade"]],
        "baseline_runs_s": [round(r["wall"], 3) for r in runs["baseline"]],
    }


def main() -> int:
    if sys.argv[1:2] == ["--jobs"]:  # the shard-parallel benchmark, in its own process
        jobs_bench = Path(__file__).with_name("bench_upgrade_jobs.py")
        return subprocess.run([sys.executable, str(jobs_bench), *sys.argv[2:]]).returncode
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size-gb", type=float, default=1.1, help="size of each checkpoint (default 1.1)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="measurements per command (median)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--cases", default="f4-torch,f2-torch,f4-safetensors,f4-dcp,f2-dcp", help="comma-separated"
    )
    args = parser.parse_args()
    size = int(args.size_gb * GIB)
    if size < GIB:
        print(
            "note: the issue's target is stated for checkpoints of at least 1 GB", file=sys.stderr
        )
    base = args.dir or Path(tempfile.gettempdir())
    free = shutil.disk_usage(base).free
    if free < 3.5 * size + GIB:
        need = (3.5 * size + GIB) / GIB
        raise SystemExit(f"not enough free disk in {base}: {free / GIB:.1f} GiB, need {need:.1f}")
    imports = "import torch, compat.checkpoint.converter, compat.cli.upgrade, safetensors.torch"
    idle = measure([sys.executable, "-c", imports])["peak"]
    # a DCP conversion also imports torch.distributed.checkpoint (only then)
    dcp_imports = imports + ", torch.distributed.checkpoint"
    idle_dcp = measure([sys.executable, "-c", dcp_imports])["peak"]
    results = []
    work = Path(tempfile.mkdtemp(prefix="bench_upgrade_", dir=base))
    try:
        for case in args.cases.split(","):
            layout, form = case.split("-", 1)
            src = work / {"safetensors": "legacy.safetensors", "dcp": "legacy.dcp"}.get(
                form, "legacy.pt"
            )
            if layout == "f2":
                largest, extra = make_f2(src, size, form=form), ["--output-dtype", "bfloat16"]
            else:
                largest, extra = make_f4(src, size, form=form), []
            own = idle_dcp if form == "dcp" else idle
            results.append(run_case(case, src, largest, extra, args.repeat, own))
            _remove(src)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "interpreter_rss": idle,
        "interpreter_rss_dcp": idle_dcp,
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    mib = 2**20
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(
        f"python + torch + compat, idle: {idle / mib:.0f} MiB RSS "
        f"({idle_dcp / mib:.0f} MiB with torch.distributed.checkpoint, the dcp cases' net)"
    )
    columns = (
        "case",
        "file MiB",
        "base s",
        "upgr s",
        "ratio",
        "peak MiB",
        "/file",
        "net",
        "/largest",
        "net",
    )
    print(("{:<15}" + "{:>9}" * (len(columns) - 1)).format(*columns))
    for r in results:
        row = (
            r["case"],
            f"{r['file_bytes'] / mib:.0f}",
            f"{r['baseline_s']:.2f}",
            f"{r['upgrade_s']:.2f}",
            f"{r['time_ratio']:.2f}",
            f"{r['upgrade_peak_rss'] / mib:.0f}",
            f"{r['rss_over_file']:.2f}",
            f"{r['net_rss_over_file']:.2f}",
            f"{r['rss_over_largest']:.2f}",
            f"{r['net_rss_over_largest']:.2f}",
        )
        print(("{:<15}" + "{:>9}" * (len(row) - 1)).format(*row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
