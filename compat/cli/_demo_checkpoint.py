"""Demo section: a legacy checkpoint, saved the way upstream and torchair leave it, is
loaded into compat's modules (upgraded automatically), run and checked bit for bit
against golden vectors computed from the legacy tensors by an independent oracle."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compat import LinearQuant, upgrade_report
from compat.cli import _demo_core, _demo_golden

# name -> legacy form of the checkpoint (what the golden tensors are saved as)
_FORMS = {
    "fc1": "F2 torchair int64 scale + F4 float weight",
    "fc2": "F4 float32 weight",
    "fc3": "F2 int64 scale, bfloat16 output",
}


def _legacy_state(layers: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """What a torchair-converted model re-saved after a plain load looks like."""
    sd: dict[str, torch.Tensor] = {}
    for entry in layers:
        name = entry["name"]
        weight = _demo_golden.tensor(entry["weight"])
        sd[f"{name}.weight"] = weight if name == "fc3" else weight.float()  # F4: float32 copy
        sd[f"{name}.scale"] = _demo_golden.tensor(entry["scale"])  # int64 where torchair ran
        sd[f"{name}.bias"] = _demo_golden.tensor(entry["bias"])
        if "offset" in entry:
            sd[f"{name}.offset"] = _demo_golden.tensor(entry["offset"])  # the stale key
    return sd


def run_section(args: argparse.Namespace) -> bool:
    device = args.device
    layers = _demo_golden.load()["checkpoint"]
    legacy = _legacy_state(layers)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "legacy.pt"
        torch.save(legacy, path)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    model = nn.Module()
    for entry in layers:
        out = getattr(torch, entry["output_dtype"])
        module = LinearQuant(
            entry["in_features"],
            entry["out_features"],
            offset="offset" in entry,
            output_dtype=out,
            device=device,
        )
        model.add_module(entry["name"], module)
    model.load_state_dict(loaded)  # upgraded on load: dtypes adopted, int64 decoded for bf16
    changes = upgrade_report(loaded, output_dtypes={"fc3": torch.bfloat16}).changes
    print(
        f"legacy checkpoint: {len(legacy)} tensors; upgraded on load: "
        f"{', '.join(sorted(c.key for c in changes))}"
    )
    for entry in layers:
        layer = model.get_submodule(entry["name"])
        print(
            f"  {entry['name']}: {_FORMS[entry['name']]} -> weight "
            f"{str(layer.weight.dtype)[6:]}, scale {str(layer.scale.dtype)[6:]}"
        )
    _demo_core.print_header()
    ok = True
    for entry in layers:
        layer = model.get_submodule(entry["name"])
        ok &= _demo_core.check(entry["name"], layer, entry, device)
        ok &= layer.weight.dtype == torch.int8
    return ok
