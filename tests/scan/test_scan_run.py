"""Fixed fixtures still run, and compute what the legacy code computed.

Every fixture (``NAME.in``) and its fixed text (from ``fix_source``, which must equal
``NAME.out``) run in a fresh interpreter with the stand-in torch_npu (legacy variant: the
deprecated class still exists, and compat's start-up hook takes its name over) through
``run_fixture.py``, whose NPU ops compute with the oracle. Before and after the fix the
modules must end the same way, build the same layers and give the same outputs; every
recorded output must equal the oracle's re-derivation from the layer's own parameters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import oracle
import pytest

from compat.scan import fix_source

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
STANDIN = HERE.parent / "standin"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.in"))
# fixtures that stop with an error before the fix, and so after it, the same way
FAILING = {
    "dynamic": "ModuleNotFoundError: No module named 'mylib'",
    "negatives": "ModuleNotFoundError: No module named 'mylib'",
    "unfixable_calls": "ValueError: LinearA8W8Quant: argument 'output_dtype' is torch.int32",
}
# fixtures whose layers run a forward pass (so that outputs are compared)
FORWARD = {"graph_helper", "local_constants", "model_constants", "upstream_unittest"}


def _run(paths: list[Path]) -> dict[str, dict[str, Any]]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TORCH_NPU_STANDIN", "LINEAR_QUANT", "PYTEST", "PYTHON"))
    }
    env.pop("TORCH_DEVICE_BACKEND_AUTOLOAD", None)
    env.update({"PYTHONPATH": str(STANDIN), "TORCH_NPU_STANDIN_VARIANT": "legacy"})
    done = subprocess.run(
        [sys.executable, str(HERE / "run_fixture.py"), *map(str, paths)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(paths[0].parent),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"path"')]
    assert len(results) == len(paths), done.stdout[-3000:]
    return {Path(r["path"]).stem: r for r in results}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    before_dir = tmp_path_factory.mktemp("before")
    after_dir = tmp_path_factory.mktemp("after")
    for name in NAMES:
        source = (FIXTURES / f"{name}.in").read_bytes().decode("utf-8")
        fixed, _, _ = fix_source(source, f"{name}.py")
        assert fixed == (FIXTURES / f"{name}.out").read_bytes().decode("utf-8"), name
        (before_dir / f"{name}.py").write_bytes(source.encode("utf-8"))
        (after_dir / f"{name}.py").write_bytes(fixed.encode("utf-8"))
    before = _run([before_dir / f"{name}.py" for name in NAMES])
    after = _run([after_dir / f"{name}.py" for name in NAMES])
    return before, after


@pytest.mark.parametrize("name", NAMES)
def test_fixed_fixture_runs_the_same(name: str, runs: tuple[dict[str, Any], ...]) -> None:
    before, after = runs[0][name], runs[1][name]
    if name in FAILING:
        assert before["error"].startswith(FAILING[name])
    else:
        assert before["error"] is None
        assert before["exit"] in (0, False)
    for key in ("exit", "error", "layers", "records"):
        assert after[key] == before[key], key
    assert bool(before["records"]) == (name in FORWARD)


def _expected(record: dict[str, Any]) -> list[Any]:
    out = {"torch.int8": "int8", "torch.float16": "float16", "torch.bfloat16": "bfloat16"}
    kind = out[record["dtype"]]
    weight = np.array(record["weight"], dtype=np.int8)
    offset = None if record["offset"] is None else np.array(record["offset"], dtype=np.float32)
    bias = None if record["bias"] is None else np.array(record["bias"], dtype=np.int32)
    y = oracle.quant_matmul(
        np.array(record["x"], dtype=np.int8),
        weight.T,
        np.array(record["scale"], dtype=np.float32),
        offset=offset,
        bias=bias,
        bias_kind=None if bias is None else "int32",
        out=kind,
    )
    if kind == "bfloat16":  # bit patterns -> the float32 values they stand for
        y = (y.astype(np.uint32) << 16).view(np.float32)
    return y.tolist()


@pytest.mark.parametrize("name", sorted(FORWARD))
def test_outputs_match_the_oracle(name: str, runs: tuple[dict[str, Any], ...]) -> None:
    for side in runs:
        records = side[name]["records"]
        assert records
        for record in records:
            assert record["out"] == _expected(record)
