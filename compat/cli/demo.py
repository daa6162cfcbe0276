"""``python -m compat demo``: build, run and check a small quantized model.

The demo is made of sections (see ``SECTIONS``); each prints its own table and returns
whether every check passed. The command exits 1 if any section failed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

HELP = (
    "run a small quantized model on the active backend and check it bit for bit against "
    "golden vectors from an independent oracle"
)

# (title, module with ``run_section(args) -> bool``), in the order they run.
SECTIONS: list[tuple[str, str]] = [
    ("LinearQuant model", "compat.cli._demo_core"),
    ("Legacy LinearA8W8Quant code", "compat.cli._demo_legacy"),
    ("Legacy checkpoint, upgraded on load", "compat.cli._demo_checkpoint"),
]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="which shipped golden vectors to use (default: 0, the only ones shipped)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device to run on (default: cpu; the reference backend)",
    )


def main_sections(seed: int = 0, device: str = "cpu") -> bool:
    """Run every section; True when all passed."""
    from compat._torchload import ensure_torch

    ensure_torch()
    args = argparse.Namespace(seed=seed, device=device)
    failed = []
    for title, module_name in SECTIONS:
        print(f"== {title} ==")
        ok = importlib.import_module(module_name).run_section(args)
        print(f"-> {'PASS' if ok else 'FAIL'}\n")
        if not ok:
            failed.append(title)
    if failed:
        print(f"demo FAILED: {', '.join(failed)}")
        return False
    print("demo passed: every check passed")
    return True


def _device_problem(device: str) -> str | None:
    """Why ``device`` cannot run the demo, or None."""
    from compat._torchload import ensure_torch

    ensure_torch()
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        return f"argument --device: {device!r} is not a torch device ({err})"
    if dev.type == "meta":
        return "argument --device: 'meta' tensors have no values to check; use cpu or a real device"
    try:
        torch.zeros(1, device=dev)
    except Exception as err:
        return f"argument --device: {device!r} is not usable here ({type(err).__name__}: {err})"
    return None


def run(args: argparse.Namespace) -> int:
    from compat.cli import _demo_golden

    if args.seed not in _demo_golden.seeds():
        shipped = ", ".join(map(str, _demo_golden.seeds()))
        print(
            f"python -m compat demo: error: argument --seed: {args.seed}; golden vectors are "
            f"shipped for seed {shipped} only (regenerate them with "
            "tests/data/make_demo_golden.py)",
            file=sys.stderr,
        )
        return 2
    problem = _device_problem(args.device)
    if problem is not None:
        print(f"python -m compat demo: error: {problem}", file=sys.stderr)
        return 2
    return 0 if main_sections(args.seed, args.device) else 1
