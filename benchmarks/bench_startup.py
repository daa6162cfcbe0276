"""Start-up cost of the .pth hook (target: < 5 ms).

Two measurements, printed side by side:

1. the hook itself: ``site`` runs the single line of ``linear_quant_compat_startup.pth``;
   here that line is run in-process (compile + exec, as ``site`` does) many times and
   its median reported;
2. whole interpreters: ``python -c pass`` started alternately with the hook and with
   ``LINEAR_QUANT_COMPAT_DISABLE=1``; the difference of the medians is the hook's cost
   plus noise (both sides pay for Python and site alike).

It also checks that the hook imports nothing: the set of modules loaded at start-up is
the same with and without it (in particular, no torch and no compat). The target is for
``LINEAR_QUANT_COMPAT_TORCH_NPU`` unset (every interpreter of the environment pays it);
the hook line with the variable set (``cpu``: it also installs the stand-in's stub) is
timed and checked for imports too, for information.

Run: ``python benchmarks/bench_startup.py [--runs 40]`` with the package installed
(``pip install -e .``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

PTH = "linear_quant_compat_startup.pth"
DISABLE = "LINEAR_QUANT_COMPAT_DISABLE"
STAND_IN = "LINEAR_QUANT_COMPAT_TORCH_NPU"


def in_process_ms(line: str, repeat: int, stand_in: str | None = None) -> float:
    """Median cost of the hook line, with ``LINEAR_QUANT_COMPAT_TORCH_NPU`` set to
    ``stand_in`` (None: unset)."""
    saved = os.environ.pop(STAND_IN, None)
    if stand_in is not None:
        os.environ[STAND_IN] = stand_in
    try:
        return _median_exec_ms(line, repeat)
    finally:
        os.environ.pop(STAND_IN, None)
        if saved is not None:
            os.environ[STAND_IN] = saved


def _median_exec_ms(line: str, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        before = list(sys.meta_path)
        start = time.perf_counter()
        exec(compile(line, PTH, "exec"))  # what site.addpackage does with the line
        samples.append((time.perf_counter() - start) * 1e3)
        sys.meta_path[:] = before  # remove the stubs so that the next run installs them again
    return statistics.median(samples)


def interpreter_ms(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return (time.perf_counter() - start) * 1e3


def startup_modules(env: dict[str, str]) -> set[str]:
    code = "import json, sys; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    return set(json.loads(out.stdout))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=40, help="interpreter starts per side")
    parser.add_argument("--repeat", type=int, default=2000, help="in-process runs of the hook")
    args = parser.parse_args()

    pth = Path(sysconfig.get_paths()["purelib"]) / PTH
    if not pth.is_file():
        print(f"error: {pth} not found; install the package first (pip install -e .)")
        return 1
    line = pth.read_text().strip()
    hook_ms = in_process_ms(line, args.repeat)
    hook_stand_in_ms = in_process_ms(line, args.repeat, stand_in="cpu")

    on = {k: v for k, v in os.environ.items() if k not in (DISABLE, STAND_IN)}
    off = {**on, DISABLE: "1"}
    with_hook, without = [], []
    for _ in range(3):  # warm the file system caches
        interpreter_ms(on), interpreter_ms(off)
    for _ in range(args.runs):
        with_hook.append(interpreter_ms(on))
        without.append(interpreter_ms(off))
    diff = statistics.median(with_hook) - statistics.median(without)
    plain = startup_modules(off)
    extra = startup_modules(on) - plain
    extra_stand_in = startup_modules({**on, STAND_IN: "cpu"}) - plain

    print(f"python {sys.version.split()[0]}, {pth}")
    print(f"hook line, in process (median of {args.repeat}):      {hook_ms * 1e3:8.1f} us")
    print(f"  same, {STAND_IN}=cpu:  {hook_stand_in_ms * 1e3:8.1f} us")
    with_ms = statistics.median(with_hook)
    print(f"python -c pass with hook (median of {args.runs}):       {with_ms:8.2f} ms")
    print(f"python -c pass, {DISABLE}=1:     {statistics.median(without):8.2f} ms")
    print(f"difference (hook + noise):                     {diff:8.2f} ms")
    print(f"modules imported at start-up because of the hook: {sorted(extra) or 'none'}")
    print(f"  same, {STAND_IN}=cpu: {sorted(extra_stand_in) or 'none'}")
    verdict = "OK" if hook_ms < 5 and not extra and not extra_stand_in else "ABOVE TARGET"
    print(f"start-up cost {hook_ms:.3f} ms (target < 5 ms): {verdict}")
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    raise SystemExit(main())
