"""Benchmark: ``python -m compat upgrade --jobs N`` on a >= 2 GB sharded checkpoint.

    python benchmarks/bench_upgrade_jobs.py [--size-gb 2.1] [--shards 8] [--repeat 2]
        [--format sharded|dcp]

Writes a Hugging Face sharded safetensors checkpoint (float32 weights holding int8 values,
F4, and torchair int64 scales, F2), then measures in fresh subprocesses, alternating in the
same run: ``upgrade --jobs 1``, ``upgrade --jobs 2`` and ``cp -r`` of the same directory
(the floor: reading and writing the bytes). Prints the median times, the ratios
jobs 2 / jobs 1 (target <= 0.65 on 2 cores) and jobs 2 / cp -r (target <= 2), peak RSS
(the wrapper's children: with --jobs 2 the larger of parent and workers is reported by
the kernel as the maximum over all descendants) against the largest shard, the memory of
the whole process tree in one more (untimed) run of each --jobs setting (sums of PSS and
RSS, sampled every 20 ms) against N x the largest shard, and the CPU flags.
``--format dcp`` writes the same tensors as one ``torch.distributed.checkpoint``
directory instead (peak RSS then against the largest tensor). Every file is deleted
afterwards.
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
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from bench_upgrade import GIB, measure
from safetensors.torch import save_file


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    wanted = ("avx2", "avx512f", "avx512_vnni", "amx_int8")
    return " ".join(f for f in wanted if f in flags) or "none of " + ", ".join(wanted)


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid] + [p for child in children for p in _tree(int(child))]


def _rss_pss(pid: int) -> tuple[int, int]:
    """Resident and proportional set size of one process, in bytes (0, 0 once it ended)."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return rss, pss


def tree_memory(cmd: list[str], every: float = 0.02) -> dict[str, int] | None:
    """Run ``cmd`` once more, sampling every ``every`` s the sum over its process tree of
    RSS (pages shared by the forked workers counted once per process) and of PSS (shared
    pages split between the processes: the memory the tree really holds). None where
    /proc has no smaps_rollup (not Linux)."""
    if not Path("/proc/self/smaps_rollup").exists():
        return None
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak = {"rss": 0, "pss": 0, "processes": 0}
    while child.poll() is None:
        pids = _tree(child.pid)
        sizes = [_rss_pss(p) for p in pids]
        peak["rss"] = max(peak["rss"], sum(r for r, _ in sizes))
        peak["pss"] = max(peak["pss"], sum(q for _, q in sizes))
        peak["processes"] = max(peak["processes"], len(pids))
        time.sleep(every)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {child.returncode}")
    return peak


def _shard_states(size: int, shards: int) -> Iterator[dict[str, torch.Tensor]]:
    """The tensors of each of ``shards`` shards of about ``size / shards`` bytes."""
    n, k = 4096, 4096  # 64 MiB float32 per weight
    per_shard = max(1, round(size / shards / (n * k * 4)))
    g = torch.Generator().manual_seed(0)
    for s in range(shards):
        state = {}
        for j in range(per_shard):
            p = f"layers.{s * per_shard + j}."
            state[p + "weight"] = torch.randint(
                -128, 128, (n, k), dtype=torch.int8, generator=g
            ).float()
            bits = (torch.rand(n, generator=g) * 1e-3).view(torch.int32).to(
                torch.int64
            ) & 0xFFFFE000
            state[p + "scale"] = bits | (1 << 46)
            state[p + "bias"] = torch.zeros(n, dtype=torch.int32)
        yield state


def make(path: Path, size: int, shards: int) -> int:
    """``shards`` safetensors files of about ``size / shards`` bytes; the largest's size."""
    path.mkdir()
    weight_map: dict[str, str] = {}
    largest = 0
    for s, state in enumerate(_shard_states(size, shards)):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(state, str(path / name))
        largest = max(largest, (path / name).stat().st_size)
        weight_map.update(dict.fromkeys(state, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return largest


def make_dcp(path: Path, size: int, shards: int) -> int:
    """The same tensors as one ``torch.distributed.checkpoint`` directory; the largest
    tensor's size (what one worker holds at a time)."""
    state: dict[str, torch.Tensor] = {}
    for part in _shard_states(size, shards):
        state.update(part)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=str(path))
    return max(t.numel() * t.element_size() for t in state.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.1)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument(
        "--format",
        choices=("sharded", "dcp"),
        default="sharded",
        help="sharded safetensors (default) or one torch.distributed.checkpoint directory",
    )
    args = parser.parse_args()
    size = int(args.size_gb * GIB)
    base = args.dir or Path(tempfile.gettempdir())
    if shutil.disk_usage(base).free < 3 * size + GIB:
        raise SystemExit(f"not enough free disk in {base}")
    work = Path(tempfile.mkdtemp(prefix="bench_jobs_", dir=base))
    try:
        src = work / "src"
        largest = (make_dcp if args.format == "dcp" else make)(src, size, args.shards)
        total = sum(p.stat().st_size for p in src.iterdir())
        out = work / "out"
        commands = {
            "jobs 1": [
                sys.executable,
                "-m",
                "compat",
                "upgrade",
                str(src),
                str(out),
                "-q",
                "--jobs",
                "1",
            ],
            "jobs 2": [
                sys.executable,
                "-m",
                "compat",
                "upgrade",
                str(src),
                str(out),
                "-q",
                "--jobs",
                "2",
            ],
            "cp -r": ["cp", "-r", str(src), str(out)],
        }
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in commands}
        for _ in range(args.repeat):
            for label, cmd in commands.items():
                runs[label].append(measure(cmd))
                shutil.rmtree(out)
        trees: dict[str, dict[str, int] | None] = {}
        for label in ("jobs 1", "jobs 2"):  # untimed: the sampling costs CPU
            trees[label] = tree_memory(commands[label])
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = {label: statistics.median(r["wall"] for r in rs) for label, rs in runs.items()}
    peak = {label: max(r["peak"] for r in rs) for label, rs in runs.items()}
    mib = 2**20
    print(
        f"torch {torch.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"flags: {cpu_flags()}"
    )
    what = "DCP directory" if args.format == "dcp" else f"{args.shards} shards"
    unit = "tensor" if args.format == "dcp" else "shard"
    print(f"checkpoint: {what}, {total / mib:.0f} MiB, largest {unit} {largest / mib:.0f} MiB")
    print(f"{'command':<8} {'median s':>9} {'runs s':>18} {'peak MiB':>9} {'/largest':>9}")
    for label in commands:
        times = ", ".join(f"{r['wall']:.2f}" for r in runs[label])
        print(
            f"{label:<8} {wall[label]:>9.2f} {times:>18} {peak[label] / mib:>9.0f} "
            f"{peak[label] / largest:>9.2f}"
        )
    # the bound is per shard; a DCP tensor is far smaller than the interpreter
    target = " (target <= 1.10)" if args.format == "sharded" else ""
    for label, tree in trees.items():
        if tree is None:
            print(f"{label}: process-tree memory not measured (no /proc/*/smaps_rollup)")
            continue
        jobs = int(label.split()[1])
        print(
            f"{label}: {tree['processes']} process(es), peak PSS sum {tree['pss'] / mib:.0f} MiB "
            f"= {tree['pss'] / (jobs * largest):.2f}x {jobs} x largest {unit}{target}, "
            f"peak RSS sum {tree['rss'] / mib:.0f} MiB (shared pages counted per process)"
        )
    print(f"jobs 2 / jobs 1 = {wall['jobs 2'] / wall['jobs 1']:.2f} (target <= 0.65)")
    print(f"jobs 2 / cp -r  = {wall['jobs 2'] / wall['cp -r']:.2f} (target <= 2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
