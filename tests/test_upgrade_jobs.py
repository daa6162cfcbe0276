"""`python -m compat upgrade --jobs N` (issue 14): shards converted in worker processes give
byte-identical output to one process; the commit stays all or nothing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import oracle
import pytest
import torch
from safetensors.torch import save_file

import compat
from compat.checkpoint import workers
from compat.cli import main as cli

SHARDS = 4


def _sharded(path: Path, *, bad_shard: int | None = None) -> Path:
    """4 safetensors shards of float32 re-saved int8 weights (F4) and torchair int64
    scales (F2); ``bad_shard`` gets a weight value 0.5 that cannot be restored."""
    path.mkdir()
    g = torch.Generator().manual_seed(11)
    weight_map = {}
    for i in range(SHARDS):
        name = f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"
        state = {}
        for j in range(2):
            p = f"layers.{2 * i + j}."
            w = torch.randint(-128, 128, (64, 128), generator=g).float()
            if bad_shard == i and j == 1:
                w[3, 5] = 0.5
            state[p + "weight"] = w
            scale = (torch.rand(64, generator=g) + 0.5) * 1e-3
            state[p + "scale"] = torch.from_numpy(oracle.encode(scale.numpy()).astype(np.int64))
            state[p + "bias"] = torch.zeros(64, dtype=torch.int32)
        save_file(state, str(path / name))
        weight_map.update(dict.fromkeys(state, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


def _digests(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_jobs_2_writes_exactly_what_jobs_1_writes(tmp_path: Path) -> None:
    src = _sharded(tmp_path / "src")
    before = _digests(src)
    assert cli(["upgrade", str(src), str(tmp_path / "one"), "--jobs", "1", "-q"]) == 0
    assert cli(["upgrade", str(src), str(tmp_path / "two"), "--jobs", "2", "-q"]) == 0
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")
    assert _digests(src) == before
    state = compat.load_legacy(tmp_path / "two")
    raw = compat.load_legacy(src)  # upgraded in memory, independently of the workers
    assert state.keys() == raw.keys()
    assert all(torch.equal(state[k], raw[k]) and state[k].dtype == raw[k].dtype for k in raw)
    assert state["layers.5.weight"].dtype == torch.int8


def test_jobs_in_place_is_all_or_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _sharded(tmp_path / "src", bad_shard=2)
    before = _digests(src)
    assert cli(["upgrade", str(src), "--in-place", "--jobs", "2"]) == 1
    err = capsys.readouterr().err
    assert "'layers.5.weight'" in err and "0.5" in err  # found while planning
    assert _digests(src) == before  # no shard replaced, no backup, no temporary left
    assert cli(["upgrade", str(src), str(tmp_path / "dst"), "--jobs", "2"]) == 1
    assert not (tmp_path / "dst").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    good = _sharded(tmp_path / "good")
    original = _digests(good)
    assert cli(["upgrade", str(good), "--in-place", "--jobs", "2", "-q"]) == 0
    names = sorted(p.name for p in good.iterdir())
    assert sum(n.endswith(".bak") for n in names) == SHARDS + 1
    for name, digest in original.items():
        assert hashlib.sha256((good / f"{name}.bak").read_bytes()).hexdigest() == digest
    assert compat.load_legacy(good)["layers.0.weight"].dtype == torch.int8


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_bad_weight_found_while_writing_is_reported_in_full(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], jobs: str
) -> None:
    src = _sharded(tmp_path / "src", bad_shard=3)
    before = _digests(src)
    assert cli(["upgrade", str(src), str(tmp_path / "dst"), "--jobs", jobs]) == 1
    err = capsys.readouterr().err
    assert "'layers.7.weight'" in err and "0.5" in err and "[3, 5]" in err
    assert not (tmp_path / "dst").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert _digests(src) == before


def test_jobs_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _sharded(tmp_path / "src")
    assert cli(["upgrade", str(src), str(tmp_path / "o"), "--jobs", "0"]) == 2
    assert "--jobs 0: must be at least 1" in capsys.readouterr().err


def test_a_failing_worker_removes_every_temporary(tmp_path: Path) -> None:
    from compat.checkpoint.files import sharded
    from compat.checkpoint.progress import Progress
    from compat.checkpoint.request import Request
    from compat.checkpoint.upgrade import plan_state_dict

    src = _sharded(tmp_path / "src")
    index = src / "model.safetensors.index.json"
    _index, weight_map = sharded.read_index(index)
    shards = sharded.open_shards(index, weight_map, False)
    opened = sharded.FORMAT.open(index, trust_pickle=False)
    report = plan_state_dict(list(weight_map), opened.access, None)
    opened.close()
    out = tmp_path / "out"
    out.mkdir()
    targets = {name: out / name for name in shards}
    doomed = next(iter(shards.values()))
    doomed.path.write_bytes(b"not a safetensors file")  # the worker cannot read it
    try:
        with pytest.raises(compat.CheckpointError, match=doomed.name):
            sharded._write_shards(
                Request(src=src, jobs=2),
                list(shards.values()),
                report,
                targets,
                Progress(1, enabled=False),
            )
    finally:
        for shard in shards.values():
            if shard.st is not None:
                shard.st.close()
    assert list(out.iterdir()) == []  # the other shards' temporaries are gone too


_AFTER_PARALLEL_WORK = """
import sys, torch
from compat.checkpoint import workers
from compat.cli import main
x = torch.randn(1500, 1500)
(x @ x).sum()  # starts torch's intra-op thread pool in this process
print(workers.context().get_start_method())
sys.exit(main(["upgrade", sys.argv[1], sys.argv[2], "--jobs", "2", "-q"]))
"""


def test_forked_workers_after_multithreaded_torch_work(tmp_path: Path) -> None:
    """Workers are forked on Linux from a process with one Python thread; a forked child
    of a process that used torch's OpenMP pool must not hang (it runs single-threaded)."""
    src = _sharded(tmp_path / "src")
    assert cli(["upgrade", str(src), str(tmp_path / "one"), "--jobs", "1", "-q"]) == 0
    run = subprocess.run(
        [sys.executable, "-c", _AFTER_PARALLEL_WORK, str(src), str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    expected = "fork" if sys.platform == "linux" else "spawn"
    assert run.stdout.split()[0] == expected
    assert _digests(tmp_path / "two") == _digests(tmp_path / "one")


def test_workers_are_spawned_while_another_thread_runs() -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert workers.context().get_start_method() == "spawn"
    finally:
        stop.set()
        thread.join()


def _square_or_fail(x: int) -> int:
    """A worker task for the runner test: fails on odd numbers."""
    if x % 2:
        raise ValueError(f"odd {x}")
    return x * x


def test_the_worker_runner_hands_over_every_success_then_lists_every_failure() -> None:
    from compat.checkpoint.progress import Progress

    calls = [workers.Call(_square_or_fail, (x,), f"item {x}", 10 * x) for x in range(6)]
    progress = Progress(1000, enabled=False)
    got: dict[str, int] = {}
    with pytest.raises(compat.CheckpointError) as caught:
        workers.run(2, calls, progress, lambda call, result: got.update({call.label: result}))
    assert got == {"item 0": 0, "item 2": 4, "item 4": 16}  # before the error was raised
    assert sorted(caught.value.problems) == ["item 1: odd 1", "item 3: odd 3", "item 5: odd 5"]
    assert progress.done == 10 * sum(range(6))  # every call, failed or not
    ok: dict[str, int] = {}
    workers.run(2, calls[::2], progress, lambda call, result: ok.update({call.label: result}))
    assert ok == got
