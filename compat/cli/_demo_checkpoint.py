"""Demo section: a legacy checkpoint, saved the way upstream and torchair leave it, is
loaded into compat's modules (upgraded automatically), run and checked."""

from __future__ import annotations

import argparse
import struct
import tempfile
from pathlib import Path

import torch
from torch import nn

from compat import LinearQuant, trans_quant_param, upgrade_report
from compat.cli._demo_oracle import linear64, tolerance

# (name, in, out, output dtype, offset, legacy form of the checkpoint)
_LAYERS = [
    ("fc1", 64, 128, torch.int8, True, "F2 torchair int64 scale + F4 float weight"),
    ("fc2", 128, 96, torch.float16, False, "F4 float32 weight"),
    ("fc3", 96, 32, torch.bfloat16, False, "F2 int64 scale, bfloat16 output"),
]


def _decode(q: int) -> tuple[float, int]:
    """docs/ops.md §1.5 on one Python int, independent of compat: fp19 scale and 9-bit offset."""
    scale = struct.unpack("<f", struct.pack("<I", q & 0xFFFFE000))[0]
    o9 = (q >> 37) & 0x1FF
    return scale, o9 - 512 if o9 >= 256 else o9


def _legacy_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """What a torchair-converted model re-saved after a plain load looks like."""
    sd: dict[str, torch.Tensor] = {}
    for name, k, n, _out, offset, _form in _LAYERS:
        acc_std = (k**0.5) * 74.0 * 74.0
        weight = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
        scale = (torch.rand(n, generator=gen) + 0.5) * (40.0 / acc_std)
        sd[f"{name}.weight"] = weight.float() if name != "fc3" else weight  # F4: float32 copy
        sd[f"{name}.bias"] = torch.randint(-2000, 2000, (n,), dtype=torch.int32, generator=gen)
        off = torch.randn(n, generator=gen) * 10.0 if offset else None
        if name == "fc2":
            sd[f"{name}.scale"] = scale
        else:  # torchair's use_internal_format_weight: int64 with the offset folded in
            sd[f"{name}.scale"] = trans_quant_param(scale, off)
        if off is not None:
            sd[f"{name}.offset"] = off  # the stale float32 key torchair leaves
    return sd


def run_section(args: argparse.Namespace) -> bool:
    device = args.device
    gen = torch.Generator().manual_seed(args.seed + 1)
    legacy = _legacy_state(gen)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "legacy.pt"
        torch.save(legacy, path)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    model = nn.Module()
    for name, k, n, out, offset, _form in _LAYERS:
        model.add_module(name, LinearQuant(k, n, offset=offset, output_dtype=out, device=device))
    model.load_state_dict(loaded)  # upgraded on load: dtypes adopted, int64 decoded for bf16
    changes = {
        c.key: c.action
        for c in upgrade_report(loaded, output_dtypes={"fc3": torch.bfloat16}).changes
    }
    print(
        f"legacy checkpoint: {len(legacy)} tensors; upgraded on load: {', '.join(sorted(changes))}"
    )
    print(f"{'layer':<6} {'legacy form':<42} {'loaded as':<26} {'max |diff|':>11} {'allowed':>9}")
    x = torch.randint(-128, 128, (8, 64), dtype=torch.int8, generator=gen).to(device)
    ok = True
    for name, _k, _n, out, _offset, form in _LAYERS:
        layer = model.get_submodule(name)
        y = layer(x)
        raw = legacy[f"{name}.scale"]
        if raw.dtype == torch.int64:
            pairs = [_decode(int(q)) for q in raw.tolist()]
            scale = torch.tensor([s for s, _ in pairs])
            folded = torch.tensor([float(o) for _, o in pairs])
            offset64 = folded if layer.offset is not None else None
        else:
            scale, offset64 = raw, None
        y64 = linear64(
            x.cpu(),
            legacy[f"{name}.weight"].to(torch.int8),
            scale,
            legacy[f"{name}.bias"],
            offset64,
            out,
            truncate_scale=out in (torch.int8, torch.float16),
        )
        diff = (y.cpu().to(torch.float64) - y64).abs()
        tol = tolerance(y64, out)
        good = bool((diff <= tol).all()) and y.dtype == out and layer.weight.dtype == torch.int8
        ok &= good
        loaded_as = f"w {str(layer.weight.dtype)[6:]}, scale {str(layer.scale.dtype)[6:]}"
        print(
            f"{name:<6} {form:<42} {loaded_as:<26} {diff.max().item():>11.4g} "
            f"{tol.max().item():>9.3g}{'' if good else '  MISMATCH'}"
        )
        x = (
            y
            if y.dtype == torch.int8
            else torch.round(y.float().relu() / 0.25).clamp(-128, 127).to(torch.int8)
        )
    return ok
