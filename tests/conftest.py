"""Shared test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
STANDIN = TESTS / "standin"

# Legacy user code, kept as users write it; tests/test_stand_in.py runs it in subprocesses.
collect_ignore = ["legacy_code"]


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """Tensor -> numpy; bfloat16 becomes its uint16 bit patterns (numpy has no bf16)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def python_env(*, standin: str | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child interpreter, without the variables that
    steer torch_npu, the stand-ins or pytest; then ``standin`` (see :func:`run_python`)
    and ``env`` on top."""
    steering = ("TORCH_NPU_STANDIN", "LINEAR_QUANT_COMPAT", "PYTEST_")
    full = {k: v for k, v in os.environ.items() if not k.startswith(steering)}
    full.pop("PYTHONPATH", None)
    full.pop("TORCH_DEVICE_BACKEND_AUTOLOAD", None)
    if standin is not None:
        full["PYTHONPATH"] = str(STANDIN)
        full["TORCH_NPU_STANDIN_VARIANT"] = standin
    full.update(env or {})
    return full


def run_python(
    code: str,
    *,
    standin: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` in a fresh interpreter of this venv.

    ``standin``: None (no torch_npu on the path) or a stand-in variant name
    (``legacy``, ``future``, ``broken``) to put ``tests/standin`` on PYTHONPATH.
    """
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        env=python_env(standin=standin, env=env),
        cwd=str(cwd or ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
