"""Regenerate ``compat/cli/demo_golden.json``: the demo's inputs and expected outputs.

    python tests/data/make_demo_golden.py            # rewrite the file
    python tests/data/make_demo_golden.py --check    # exit 1 if the shipped file differs

Inputs come from seeded ``torch.Generator`` draws; every expected output is computed by
tests/oracle.py (numpy, int64/float32 like the hardware), never by compat, so the library
holds the formula once and the demo checks it against independent data.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import oracle  # noqa: E402

TARGET = HERE.parent.parent / "compat" / "cli" / "demo_golden.json"
SEED = 0
BATCH = 8


def encode_array(values: np.ndarray, dtype: str) -> dict[str, Any]:
    """``{"dtype", "shape", "data"}``: little-endian bytes, base64 (bfloat16 as bits)."""
    raw = np.ascontiguousarray(values)
    return {
        "dtype": dtype,
        "shape": list(raw.shape),
        "data": base64.b64encode(raw.astype(raw.dtype.newbyteorder("<")).tobytes()).decode(),
    }


def _oracle(x: np.ndarray, layer: dict[str, Any]) -> tuple[np.ndarray, str]:
    out = layer["output_dtype"]
    y = oracle.quant_matmul(
        x.astype(np.int64),
        layer["weight"].astype(np.int64).T,
        layer["scale"],
        offset=layer.get("offset"),
        bias=layer["bias"],
        bias_kind="int32",
        out=out,
        scale_kind=layer["scale_kind"],
    )
    return y, out


def _requantize(y: np.ndarray, out: str, act_scale: float = 0.25) -> np.ndarray:
    """The demo's activation between layers: ReLU, then symmetric int8 quantization."""
    if out == "int8":
        return y.astype(np.int8)
    values = (
        (y.astype(np.uint32) << 16).view(np.float32) if out == "bfloat16" else y.astype(np.float32)
    )
    return np.clip(np.rint(np.maximum(values, 0) / np.float32(act_scale)), -128, 127).astype(
        np.int8
    )


def _draw_layer(gen: torch.Generator, k: int, n: int, *, offset: bool) -> dict[str, np.ndarray]:
    acc_std = (k**0.5) * 74.0 * 74.0  # std of a sum of k products of uniform int8
    layer = {
        "weight": torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen).numpy(),
        "scale": ((torch.rand(n, generator=gen) + 0.5) * (40.0 / acc_std)).numpy(),
        "bias": torch.randint(-2000, 2000, (n,), dtype=torch.int32, generator=gen).numpy(),
    }
    if offset:
        layer["offset"] = np.rint((torch.randn(n, generator=gen) * 10.0).numpy())
    return layer


def _section(specs: list[tuple[str, int, int, str, bool, str]], seed: int) -> list[dict[str, Any]]:
    """Layers chained through the demo's activation; each holds its own input."""
    gen = torch.Generator().manual_seed(seed)
    drawn = [(s, _draw_layer(gen, s[1], s[2], offset=s[4])) for s in specs]
    x = torch.randint(-128, 128, (BATCH, specs[0][1]), dtype=torch.int8, generator=gen).numpy()
    layers = []
    for (name, k, n, out, _offset, scale_kind), values in drawn:
        layer: dict[str, Any] = {"output_dtype": out, "scale_kind": scale_kind, **values}
        if scale_kind == "int64":  # torchair's use_internal_format_weight, offset folded in
            layer["scale"] = oracle.encode(values["scale"], values.get("offset")).astype(np.int64)
        y, _ = _oracle(x, layer)
        entry = {
            "name": name,
            "in_features": k,
            "out_features": n,
            "output_dtype": out,
            "x": encode_array(x, "int8"),
            "weight": encode_array(values["weight"], "int8"),
            "scale": encode_array(layer["scale"], "int64" if scale_kind == "int64" else "float32"),
            "bias": encode_array(values["bias"], "int32"),
            "expected": encode_array(y, {"bfloat16": "bfloat16"}.get(out, out)),
        }
        if "offset" in values:
            entry["offset"] = encode_array(values["offset"].astype(np.float32), "float32")
        layers.append(entry)
        x = _requantize(y, out)
    return layers


CORE = [
    ("fc1", 64, 128, "int8", True, "float32"),
    ("fc2", 128, 96, "float16", False, "float32"),
    ("fc3", 96, 32, "bfloat16", False, "float32"),
]
CHECKPOINT = [  # legacy forms: see compat/cli/_demo_checkpoint.py
    ("fc1", 64, 128, "int8", True, "int64"),
    ("fc2", 128, 96, "float16", False, "float32"),
    ("fc3", 96, 32, "bfloat16", False, "int64"),
]


def golden_text() -> str:
    data = {
        "about": "inputs and tests/oracle.py outputs of python -m compat demo; regenerate with "
        "python tests/data/make_demo_golden.py",
        "seed": SEED,
        "core": _section(CORE, SEED),
        "checkpoint": _section(CHECKPOINT, SEED + 1),
    }
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def main() -> int:
    text = golden_text()
    if "--check" in sys.argv:
        same = TARGET.read_text() == text
        print("up to date" if same else f"{TARGET} differs from the oracle's; regenerate it")
        return 0 if same else 1
    TARGET.write_text(text)
    print(f"wrote {TARGET} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
