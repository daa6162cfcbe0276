"""``python -m compat doctor``: what is installed, what runs where, and why.

Works even where torch_npu is installed but broken (which makes a plain ``import torch``
fail through device-backend autoload): torch_npu is probed in a child process first,
and this process imports torch with autoload switched off when the probe failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from compat import _stand_in

HELP = "report torch, torch_npu and backend status; exit 0 when the library is usable"

_AUTOLOAD_VAR = "TORCH_DEVICE_BACKEND_AUTOLOAD"
_PROBE = (
    "import json, sys\n"
    "try:\n"
    "    import torch_npu\n"
    "except BaseException as e:\n"
    "    print(json.dumps({'ok': False, 'reason': f'{type(e).__name__}: {e}'}))\n"
    "    sys.exit(0)\n"
    "print(json.dumps({'ok': True, 'version': str(getattr(torch_npu, '__version__', '?'))}))\n"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds allowed for the torch_npu probe"
    )


def probe_torch_npu(timeout: float) -> dict[str, Any]:
    """Import the real torch_npu in a child process (autoload off, compat's CPU stand-in
    off) and report what happened."""
    try:
        spec = _stand_in.real_torch_npu_spec()
    except (ImportError, ValueError) as err:
        return {"state": "broken", "reason": f"{type(err).__name__}: {err}"}
    if spec is None:
        return {"state": "absent"}
    env = dict(os.environ, **{_AUTOLOAD_VAR: "0"})
    env.pop(_stand_in.VAR, None)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"state": "broken", "reason": f"importing torch_npu took more than {timeout:g} s"}
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {
            "state": "broken",
            "reason": f"the import probe exited with code {done.returncode}: {tail}",
        }
    if result.get("ok"):
        return {"state": "available", "version": result.get("version")}
    return {"state": "broken", "reason": result.get("reason")}


def _devices(torch: Any, npu_ok: bool) -> dict[str, int]:
    devices = {"cpu": 1}
    if torch.cuda.is_available():
        devices["cuda"] = torch.cuda.device_count()
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices["mps"] = 1
    if npu_ok and hasattr(torch, "npu"):
        try:
            devices["npu"] = int(torch.npu.device_count())
        except Exception:
            devices["npu"] = 0
    return devices


def _self_check(torch: Any) -> str | None:
    """Run one tiny quant_matmul on the CPU reference (docs/ops.md §6 example:
    1000·1 - 200 -> 55)."""
    from compat import quant_matmul, trans_quant_param

    x1 = torch.tensor([[100, 10]], dtype=torch.int8)
    x2 = torch.tensor([[10], [0]], dtype=torch.int8)
    q = trans_quant_param(torch.tensor([1.0]), torch.tensor([-200.0]))
    got = quant_matmul(x1, x2, q).tolist()
    return None if got == [[55]] else f"self-check: expected [[55]], got {got}"


def report(timeout: float = 120.0) -> dict[str, Any]:
    """Collect the doctor report (imports torch, after probing torch_npu)."""
    info: dict[str, Any] = {"python": sys.version.split()[0]}
    npu = probe_torch_npu(timeout=timeout)
    info["torch_npu"] = npu
    stand_in = _stand_in.explain(npu["state"], npu.get("reason"))
    info["torch_npu_stand_in"] = {
        "active": stand_in.active,
        "reason": stand_in.reason,
        "requested_by": list(stand_in.requested_by),
    }
    if npu["state"] == "broken" and _AUTOLOAD_VAR not in os.environ:
        os.environ[_AUTOLOAD_VAR] = "0"  # for this process only: plain import torch would fail
        info["autoload_disabled_for_doctor"] = True
    try:
        import torch
    except Exception as err:
        info["torch"] = {"error": f"{type(err).__name__}: {err}"}
        info["usable"] = False
        return info
    import compat
    from compat.ops import backend

    status = backend.npu_status()
    info["torch"] = {"version": torch.__version__}
    info["compat"] = {"version": compat.__version__}
    if npu["state"] == "available" and not status.available:
        npu = {"state": "broken", "reason": status.reason}
        info["torch_npu"] = npu
    devices = _devices(torch, status.available)
    info["devices"] = devices
    info["backends"] = {dev: backend.active_backend(dev) for dev in devices}
    problem = _self_check(torch)
    info["self_check"] = problem or "ok"
    info["usable"] = problem is None
    return info


def _print_text(info: dict[str, Any]) -> None:
    print(f"python          {info['python']}")
    torch_info = info.get("torch", {})
    print(f"torch           {torch_info.get('version', torch_info.get('error'))}")
    if "compat" in info:
        print(f"compat          {info['compat']['version']}")
    npu = info["torch_npu"]
    if npu["state"] == "absent":
        print("torch_npu       absent (not installed): the pure-PyTorch reference runs everywhere")
    elif npu["state"] == "available":
        print(f"torch_npu       available, version {npu.get('version')}")
    elif "imports but lacks" in str(npu.get("reason")):
        print("torch_npu       imports, but is unusable for compat")
        print(f"  reason        {npu.get('reason')}")
        print(
            "  hint          install a torch_npu that provides npu_quant_matmul and "
            "npu_trans_quant_param. compat falls back to the reference backend."
        )
    else:
        print("torch_npu       installed but failing to import")
        print(f"  reason        {npu.get('reason')}")
        print(
            f"  hint          without the CANN libraries, plain `import torch` fails through "
            f"device-backend autoload; set {_AUTOLOAD_VAR}=0 (doctor did so for itself), install "
            f"CANN, or uninstall torch_npu. compat falls back to the reference backend."
        )
    stand_in = info["torch_npu_stand_in"]
    print(f"stand-in        {'active' if stand_in['active'] else 'off'}: {stand_in['reason']}")
    if "devices" in info:
        devs = ", ".join(f"{d} x{c}" for d, c in info["devices"].items())
        print(f"devices         {devs}")
        for dev, name in info["backends"].items():
            print(f"backend[{dev}]{' ' * max(1, 7 - len(dev))}{name}")
        print(f"self-check      {info['self_check']}")
    print(f"usable          {'yes' if info['usable'] else 'no'}")


def run(args: argparse.Namespace) -> int:
    info = report(args.timeout)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        _print_text(info)
    return 0 if info["usable"] else 1
