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


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """Tensor -> numpy; bfloat16 becomes its uint16 bit patterns (numpy has no bf16)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


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
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TORCH_NPU_STANDIN")}
    full_env.pop("PYTHONPATH", None)
    full_env.pop("TORCH_DEVICE_BACKEND_AUTOLOAD", None)
    if standin is not None:
        full_env["PYTHONPATH"] = str(STANDIN)
        full_env["TORCH_NPU_STANDIN_VARIANT"] = standin
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        env=full_env,
        cwd=str(cwd or ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
