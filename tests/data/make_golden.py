"""Make the golden legacy checkpoints of tests/data (run from the repository root).

    python tests/data/make_golden.py            # (re)write tests/data
    python tests/data/make_golden.py --check    # regenerate in a temp dir, compare

It deliberately does not import ``compat``: checkpoints are built the way upstream and
torchair build them (docs/ops.md §3.4, §4) with torch and numpy only, and the expected outputs
come from the numpy oracle below, a re-derivation of docs/ops.md §1.4/§1.5 (encoding) and §6
(the quant matmul formula). The oracle computes in float32 like the hardware
(``oracle_hw``, the bit-exact expectation) and in float64 (``oracle_ideal``); every
output is cross-checked between the two before anything is written.

Files (see golden.json for the module configurations and expectations):

* F1 ``f1_plain.pt`` (saved from the "npu:0" device tag, as on an NPU),
  ``f1_plain_legacy.pt`` (legacy serialization), ``f1_plain.safetensors``
* F2 ``f2_torchair.pt`` (use_internal_format_weight: int64 scale, stale offset),
  ``f2_torchair_v1.pt`` (int64 from the host encoder V1: junk in bits 0-12, offset
  rounded half away from zero), ``f2_sharded/`` (safetensors shards + index, one module
  split across shards)
* F3 ``f3_per_tensor.pt`` ((1,) scale/offset), ``f3_torchair.pt`` ((1,) scale folded
  with an (n,) offset, and a (1,) int64 scale)
* F4 ``f4_float_weight.pt`` (plain load into upstream's float32 parameters),
  ``f4_bf16.pt`` (then ``.to(torch.bfloat16)``; a bfloat16-output module),
  ``f4_half.pt`` (then ``.half()``: float16 scale, refused),
  ``f4_destroyed_scale.pt`` (F2 plain-loaded: int64 scale cast to float32, refused)
* ``module_pickle.pt``: ``torch.save(model)`` of torch_npu's classes (stand-in)
* ``malicious.pt`` / ``malicious.pkl``: a ``__reduce__`` running
  ``touch "$COMPAT_PICKLE_MARKER"``; must never run without explicit trust
* ``golden_io.pt``: the stored inputs and expected outputs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
M = 4  # tokens per input

# prefix -> module configuration (upstream class; output dtype name)
LAYERS: dict[str, dict[str, Any]] = {
    "blocks.0.attn.q": dict(
        cls="LinearA8W8Quant", k=32, n=16, bias="int32", offset=True, pertoken=False, out="int8"
    ),
    "blocks.0.attn.o": dict(
        cls="LinearA8W8Quant", k=16, n=24, bias="int32", offset=False, pertoken=False, out="float16"
    ),
    "blocks.1.mlp": dict(
        cls="LinearA8W8Quant",
        k=24,
        n=8,
        bias="bfloat16",
        offset=False,
        pertoken=False,
        out="bfloat16",
    ),
    "blocks.1.gate": dict(
        cls="LinearA8W8Quant",
        k=24,
        n=12,
        bias="float32",
        offset=False,
        pertoken=True,
        out="float16",
    ),
    "head": dict(
        cls="LinearQuant", k=8, n=6, bias="int32", offset=False, pertoken=False, out="int32"
    ),
}
TORCH_DTYPES = {
    "int8": torch.int8,
    "int32": torch.int32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


# --------------------------------------------------------------------------- numpy oracle
def f32_bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)


def _operands(scale: np.ndarray, offset: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 operands, a length-1 one broadcast to the other's length."""
    scale = np.asarray(scale, dtype=np.float32)
    if offset is None:
        return scale, None
    s, o = np.broadcast_arrays(scale, np.asarray(offset, dtype=np.float32))
    return s, o.astype(np.float64)


def _fold_offset(q: np.ndarray, rounded: np.ndarray) -> np.ndarray:
    o = np.clip(rounded, -256, 255).astype(np.int64)
    return q | ((o.astype(np.uint64) & np.uint64(0x1FF)) << np.uint64(37))


def encode(scale: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    """npu_trans_quant_param, round mode 0 (docs/ops.md §1.4): scale bits & 0xFFFFE000, offset
    rounded half to even (numpy rint)."""
    s, o = _operands(scale, offset)
    q = (f32_bits(s) & np.uint64(0xFFFFE000)) | np.uint64(1 << 46)
    return (q if o is None else _fold_offset(q, np.rint(o))).astype(np.int64)


def encode_v1(scale: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    """The host encoder aclnnTransQuantParam (V1): low 13 bits kept, offset rounded half
    away from zero (C round), docs/ops.md §1.4."""
    s, o = _operands(scale, offset)
    q = f32_bits(s) | np.uint64(1 << 46)
    return (q if o is None else _fold_offset(q, np.sign(o) * np.floor(np.abs(o) + 0.5))).astype(
        np.int64
    )


def decode(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """docs/ops.md §1.5: float32 scale from bits 13-31, signed 9-bit offset from bits 37-45."""
    u = np.asarray(q, dtype=np.int64).view(np.uint64)
    assert np.all((u >> np.uint64(46)) == 1), "not an encoded quant param"
    scale = (u & np.uint64(0xFFFFE000)).astype(np.uint32).view(np.float32)
    o9 = ((u >> np.uint64(37)) & np.uint64(0x1FF)).astype(np.int64)
    return scale, np.where(o9 >= 256, o9 - 512, o9)


def effective_scale(p: dict[str, Any], out: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The float32 scale and integer offset the hardware applies (docs/ops.md §2.2, §6)."""
    scale = p["scale"]
    if scale.dtype == np.int64:
        s, off = decode(scale)
        return s, (off if out == "int8" else None)
    if p["pertoken"] is None and out in ("int8", "float16"):  # op-plugin encodes fp32 first
        s, off = decode(encode(scale, p["offset"]))
        return s, (off if p["offset"] is not None and out == "int8" else None)
    return np.asarray(scale, dtype=np.float32), None


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (finite inputs)."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return (
        (u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    ).astype(np.uint16)


def _acc(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    acc = x.astype(np.int64) @ w.astype(np.int64).T
    if bias is not None and bias.dtype == np.int32:
        acc = acc + bias.astype(np.int64)  # int32 bias: before scaling
    return acc


def _before_rounding(
    p: dict[str, Any], x: np.ndarray, out: str, ft: type
) -> tuple[np.ndarray, np.ndarray | None]:
    """``y`` of docs/ops.md §6 in float type ``ft`` (the accumulator itself for int32 output)."""
    bias = p["bias"]
    acc = _acc(x, p["weight"], bias)
    if out == "int32":
        return acc, None
    s, off = effective_scale(p, out)
    y = acc.astype(ft) * s.astype(ft)
    if p["pertoken"] is not None:
        y = y * p["pertoken"].astype(ft)[:, None]
    if bias is not None and bias.dtype != np.int32:
        y = y + bias.astype(ft)  # float bias: after scale and pertoken
    return y, off


def oracle_hw(p: dict[str, Any], x: np.ndarray, out: str) -> np.ndarray:
    """docs/ops.md §6 in float32 like the hardware; float outputs as raw bit patterns."""
    y, off = _before_rounding(p, x, out, np.float32)
    if out == "int32":
        return y.astype(np.int32)
    if out == "int8":
        t = np.clip(np.rint(y), -256, 255)  # 9-bit stage, then the offset, then int8
        return np.clip(t + (0 if off is None else off), -128, 127).astype(np.int8)
    if out == "float16":
        return y.astype(np.float16).view(np.uint16)
    return bf16_bits(y)


def oracle_ideal(p: dict[str, Any], x: np.ndarray, out: str) -> np.ndarray:
    """The same formula in float64, before the final float rounding."""
    y, off = _before_rounding(p, x, out, np.float64)
    if out == "int8":
        return np.clip(np.clip(np.rint(y), -256, 255) + (0 if off is None else off), -128, 127)
    return y.astype(np.float64)


def cross_check(p: dict[str, Any], x: np.ndarray, out: str, where: str) -> np.ndarray:
    hw = oracle_hw(p, x, out)
    ideal = oracle_ideal(p, x, out)
    if out in ("int8", "int32"):
        ok = np.array_equal(hw.astype(np.float64), ideal)
    else:
        value = (
            hw.view(np.float16).astype(np.float64)
            if out == "float16"
            else (hw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        )
        mant = 10 if out == "float16" else 7
        ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(ideal), 2.0**-14))) - mant)
        ok = bool(np.all(np.abs(value - ideal) <= ulp / 2 + np.abs(ideal) * 2.0**-22 + 1e-30))
    if not ok:
        raise SystemExit(
            f"oracle cross-check failed for {where}: float32 and float64 disagree beyond rounding"
        )
    return hw


# --------------------------------------------------------------------------- parameters
def base_params(seed: int = 1234) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    params = {}
    for prefix, cfg in LAYERS.items():
        k, n = cfg["k"], cfg["n"]
        acc_std = np.sqrt(k) * 74.0 * 74.0
        p: dict[str, Any] = {
            "weight": rng.integers(-128, 128, (n, k)).astype(np.int8),
            "scale": ((rng.random(n) + 0.5) * 40.0 / acc_std).astype(np.float32),
            "offset": None,
            "pertoken": None,
            "bias": None,
        }
        if cfg["offset"]:
            off = rng.normal(0.0, 12.0, n).astype(np.float32)
            off[:4] = [2.5, -3.5, 0.5, 300.0]  # ties and saturation
            p["offset"] = off
        if cfg["bias"] == "int32":
            p["bias"] = rng.integers(-3000, 3000, n).astype(np.int32)
        elif cfg["bias"] == "bfloat16":
            b = torch.from_numpy(rng.normal(0.0, 4.0, n).astype(np.float32)).to(torch.bfloat16)
            p["bias"] = b  # kept as a torch tensor: numpy has no bfloat16
        else:
            p["bias"] = rng.normal(0.0, 4.0, n).astype(np.float32)
        if cfg["pertoken"]:
            p["pertoken_placeholder"] = np.ones(n, dtype=np.float32)  # upstream's (n,) parameter
            p["call_pertoken"] = (rng.random(M) + 0.5).astype(
                np.float32
            )  # the (m,) scale of a call
        params[prefix] = p
    return params


def inputs(seed: int = 99) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        prefix: rng.integers(-128, 128, (M, cfg["k"])).astype(np.int8)
        for prefix, cfg in LAYERS.items()
    }


def _t(a: Any) -> torch.Tensor:
    return a.clone() if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))


def state_dict(
    params: dict[str, dict[str, Any]], prefixes: list[str] | None = None
) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for prefix in prefixes or list(LAYERS):
        p = params[prefix]
        sd[f"{prefix}.weight"] = _t(p["weight"])
        sd[f"{prefix}.scale"] = _t(p["scale"])
        if p["offset"] is not None:
            sd[f"{prefix}.offset"] = _t(p["offset"])
        if "pertoken_placeholder" in p:
            sd[f"{prefix}.pertoken_scale"] = _t(p["pertoken_placeholder"])
        if p["bias"] is not None:
            sd[f"{prefix}.bias"] = _t(p["bias"])
    return sd


def numeric(
    sd: dict[str, torch.Tensor], prefix: str, call_pertoken: np.ndarray | None
) -> dict[str, Any]:
    """Oracle parameters from a checkpoint as compat loads it (float weights restored)."""

    def np_of(t: torch.Tensor) -> np.ndarray:
        return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()

    w = sd[f"{prefix}.weight"]
    bias = sd.get(f"{prefix}.bias")
    offset = sd.get(f"{prefix}.offset")
    scale = sd[f"{prefix}.scale"]
    return {
        "weight": np_of(w).astype(np.int8) if w.is_floating_point() else w.numpy(),
        "scale": np_of(scale).astype(np.float32) if scale.is_floating_point() else scale.numpy(),
        "offset": None if offset is None else offset.numpy(),
        "pertoken": call_pertoken,
        "bias": None
        if bias is None
        else (bias.numpy() if bias.dtype == torch.int32 else np_of(bias).astype(np.float32)),
    }


# --------------------------------------------------------------------------- legacy transforms
def torchair(
    sd: dict[str, torch.Tensor], prefixes: list[str], encoder: Any = encode
) -> dict[str, torch.Tensor]:
    """use_internal_format_weight on LinearA8W8Quant modules (docs/ops.md §4): scale := int64."""
    out = dict(sd)
    for prefix in prefixes:
        offset = sd.get(f"{prefix}.offset")
        q = encoder(sd[f"{prefix}.scale"].numpy(), None if offset is None else offset.numpy())
        out[f"{prefix}.scale"] = torch.from_numpy(q)
    return out


def plain_load_into_upstream(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What upstream's float32 weight/scale and int32 bias parameters make of a state_dict
    on a plain load_state_dict (copy_ into the module's dtype, docs/ops.md §3.4)."""
    out = {}
    for key, value in sd.items():
        name = key.rsplit(".", 1)[1]
        if name in ("weight", "scale", "offset", "pertoken_scale"):
            target = torch.empty(value.shape, dtype=torch.float32)
        else:  # bias
            target = torch.empty(value.shape, dtype=torch.int32)
        target.copy_(value)
        out[key] = target
    return out


def cast_floats(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``model.to(dtype)``: floating tensors change dtype, integer tensors do not."""
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}


# --------------------------------------------------------------------------- saving
def _npu_tagger(storage: Any) -> str | None:
    return "npu:0" if storage.device.type == "cpu" else None


def save_as_npu(obj: Any, path: Path, **kwargs: Any) -> None:
    """torch.save with every storage tagged "npu:0", as files saved on an NPU are."""
    registry = torch.serialization._package_registry
    entry = (1, _npu_tagger, lambda storage, location: None)
    registry.append(entry)
    registry.sort(key=lambda e: e[0])
    try:
        torch.save(obj, path, **kwargs)
    finally:
        registry.remove(entry)


def save_sharded(sd: dict[str, torch.Tensor], directory: Path, split: list[list[str]]) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    total = 0
    for i, keys in enumerate(split, 1):
        name = f"model-{i:05d}-of-{len(split):05d}.safetensors"
        save_file(
            {k: sd[k].contiguous() for k in keys}, str(directory / name), metadata={"format": "pt"}
        )
        for k in keys:
            weight_map[k] = name
            total += sd[k].numel() * sd[k].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


class _Evil:
    """Pickles to a call of os.system (never called here: pickling does not run it)."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ('touch "$COMPAT_PICKLE_MARKER"',))


MODULE_PICKLE_CODE = r"""
import sys, warnings, torch
from torch import nn
from torch_npu.contrib.module import LinearA8W8Quant, LinearQuant
data = torch.load(sys.argv[1], weights_only=True)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    q = LinearA8W8Quant(32, 16, bias=True, offset=True)
head = LinearQuant(8, 6, bias=True, output_dtype=torch.int32)
# q: upstream's documented pattern, .data set to the natural dtypes
q.weight.data = data["q.weight"]; q.scale.data = data["q.scale"]
q.offset.data = data["q.offset"]; q.bias.data = data["q.bias"]
# head: a plain load_state_dict into upstream's float32 placeholders (F4 inside the pickle)
head.load_state_dict({k[5:]: v for k, v in data.items() if k.startswith("head.")})
torch.save(nn.ModuleDict({"q": q, "head": head}), sys.argv[2])
"""


# --------------------------------------------------------------------------- main
def build(out: Path) -> dict[str, Any]:
    params = base_params()
    xs = inputs()
    io: dict[str, torch.Tensor] = {}
    manifest: dict[str, Any] = {
        "layers": {
            prefix: {
                "cls": cfg["cls"],
                "in_features": cfg["k"],
                "out_features": cfg["n"],
                "bias": cfg["bias"] is not None,
                "offset": cfg["offset"],
                "pertoken_scale": cfg["pertoken"],
                "output_dtype": cfg["out"],
            }
            for prefix, cfg in LAYERS.items()
        },
        "files": {},
    }
    a8w8 = [p for p, c in LAYERS.items() if c["cls"] == "LinearA8W8Quant"]

    def expect(
        name: str,
        sd: dict[str, torch.Tensor],
        fmt: str,
        prefixes: list[str] | None = None,
        **extra: Any,
    ) -> None:
        layers = prefixes or list(LAYERS)
        for prefix in layers:
            cfg = LAYERS[prefix]
            call_pertoken = params[prefix].get("call_pertoken")
            y = cross_check(
                numeric(sd, prefix, call_pertoken), xs[prefix], cfg["out"], f"{name}:{prefix}"
            )
            y_t = torch.from_numpy(np.ascontiguousarray(y))
            if cfg["out"] == "float16":
                y_t = y_t.view(torch.float16)
            elif cfg["out"] == "bfloat16":
                y_t = y_t.view(torch.int16).view(torch.bfloat16)
            io[f"{name}|{prefix}|x"] = torch.from_numpy(xs[prefix])
            io[f"{name}|{prefix}|y"] = y_t
            if call_pertoken is not None:
                io[f"{name}|{prefix}|pertoken"] = torch.from_numpy(call_pertoken)
        manifest["files"][name] = {"format": fmt, "expect": "ok", "layers": layers, **extra}

    def refuse(
        name: str, fmt: str, contains: list[str], prefixes: list[str] | None = None, **extra: Any
    ) -> None:
        manifest["files"][name] = {
            "format": fmt,
            "expect": "error",
            "error_contains": contains,
            "layers": prefixes or list(LAYERS),
            **extra,
        }

    f1 = state_dict(params)
    save_as_npu(f1, out / "f1_plain.pt")
    expect("f1_plain.pt", f1, "F1")
    torch.save(f1, out / "f1_plain_legacy.pt", _use_new_zipfile_serialization=False)
    expect("f1_plain_legacy.pt", f1, "F1")
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in f1.items()},
        str(out / "f1_plain.safetensors"),
        metadata={"format": "pt"},
    )
    expect("f1_plain.safetensors", f1, "F1")

    f2 = torchair(f1, a8w8)
    save_as_npu(f2, out / "f2_torchair.pt")
    expect("f2_torchair.pt", f2, "F2", decoded=["blocks.1.mlp.scale", "blocks.1.gate.scale"])
    f2v1 = torchair(f1, a8w8, encode_v1)
    torch.save(f2v1, out / "f2_torchair_v1.pt")
    expect("f2_torchair_v1.pt", f2v1, "F2")
    keys = list(f2)
    split = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    assert {k.rsplit(".", 1)[0] for k in split[0]} & {k.rsplit(".", 1)[0] for k in split[1]}, (
        "a module must span shards"
    )
    save_sharded(f2, out / "f2_sharded", split)
    expect("f2_sharded", f2, "F2", decoded=["blocks.1.mlp.scale", "blocks.1.gate.scale"])

    per_tensor = {
        prefix: {
            **p,
            "scale": p["scale"][:1].copy(),
            "offset": None if p["offset"] is None else p["offset"][:1].copy(),
        }
        for prefix, p in params.items()
    }
    f3 = state_dict(per_tensor)
    torch.save(f3, out / "f3_per_tensor.pt")
    expect("f3_per_tensor.pt", f3, "F3")
    mixed = {prefix: dict(p) for prefix, p in per_tensor.items()}
    mixed["blocks.0.attn.q"]["offset"] = params["blocks.0.attn.q"][
        "offset"
    ]  # (1,) scale, (n,) offset
    f3t = torchair(state_dict(mixed), a8w8)
    assert tuple(f3t["blocks.0.attn.q.scale"].shape) == (16,) and tuple(
        f3t["blocks.0.attn.o.scale"].shape
    ) == (1,)
    torch.save(f3t, out / "f3_torchair.pt")
    expect("f3_torchair.pt", f3t, "F2+F3")

    f4 = plain_load_into_upstream(f1)
    torch.save(f4, out / "f4_float_weight.pt")
    expect("f4_float_weight.pt", f4, "F4")
    mlp = ["blocks.1.mlp"]
    f4b = cast_floats(plain_load_into_upstream(state_dict(params, mlp)), torch.bfloat16)
    torch.save(f4b, out / "f4_bf16.pt")
    expect("f4_bf16.pt", f4b, "F4", prefixes=mlp)
    torch.save(cast_floats(f4, torch.float16), out / "f4_half.pt")
    refuse("f4_half.pt", "F4", ["'blocks.0.attn.q.scale'", "torch.float16", "model.half()"])
    torch.save(plain_load_into_upstream(f2), out / "f4_destroyed_scale.pt")
    refuse(
        "f4_destroyed_scale.pt",
        "F4",
        ["'blocks.0.attn.q.scale'", "[2**46, 2**47]", "cannot be recovered", "Re-export"],
    )

    # whole-module pickle of torch_npu's classes (built where the stand-in provides them)
    pickle_layers = {"q": "blocks.0.attn.q", "head": "head"}
    data = {
        f"{short}.{k.split('.')[-1]}": v
        for short, prefix in pickle_layers.items()
        for k, v in f1.items()
        if k.startswith(prefix + ".")
    }
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(data, Path(tmp) / "data.pt")
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "tests" / "standin"),
            "TORCH_NPU_STANDIN_VARIANT": "legacy",
            "LINEAR_QUANT_COMPAT_DISABLE": "1",  # upstream's own classes, not compat's adapter
        }
        subprocess.run(
            [
                sys.executable,
                "-c",
                MODULE_PICKLE_CODE,
                str(Path(tmp) / "data.pt"),
                str(out / "module_pickle.pt"),
            ],
            env=env,
            check=True,
        )
    for short, prefix in pickle_layers.items():
        cfg = LAYERS[prefix]
        p = numeric(
            {
                f"{short}.{k.split('.')[-1]}": v
                for k, v in data.items()
                if k.startswith(short + ".")
            },
            short,
            None,
        )
        y = cross_check(p, xs[prefix], cfg["out"], f"module_pickle:{short}")
        io[f"module_pickle.pt|{short}|x"] = torch.from_numpy(xs[prefix])
        io[f"module_pickle.pt|{short}|y"] = torch.from_numpy(np.ascontiguousarray(y))
    manifest["files"]["module_pickle.pt"] = {
        "format": "pickle",
        "expect": "refused-unless-trusted",
        "modules": {
            short: {**manifest["layers"][prefix]} for short, prefix in pickle_layers.items()
        },
        "error_contains": [
            "torch_npu.contrib.module.linear_a8w8_quant.LinearA8W8Quant",
            "--trust-pickle",
        ],
    }

    torch.save({"weight": torch.zeros(2, 2), "payload": _Evil()}, out / "malicious.pt")
    with open(out / "malicious.pkl", "wb") as f:
        import pickle

        pickle.dump({"payload": _Evil()}, f, protocol=2)
    for name in ("malicious.pt", "malicious.pkl"):
        manifest["files"][name] = {
            "format": "malicious",
            "expect": "refused",
            "marker_env": "COMPAT_PICKLE_MARKER",
        }

    torch.save(io, out / "golden_io.pt")
    for name, entry in manifest["files"].items():
        entry["sha256"] = _digest(out / name)
    (out / "golden.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        digest.update(p.name.encode())
        digest.update(p.read_bytes())
    return digest.hexdigest()


def _contents(path: Path) -> Any:
    """What a file holds, for comparing regenerated files (torch zips embed random ids)."""
    if path.is_dir():
        return {p.name: _contents(p) for p in sorted(path.iterdir())}
    if path.suffix == ".json":
        entry = json.loads(path.read_text())
        if path.name == "golden.json":
            for f in entry["files"].values():
                f.pop("sha256", None)
        return entry
    if path.suffix == ".safetensors" or path.name.startswith("malicious"):
        return path.read_bytes()
    if path.name == "module_pickle.pt":
        import zipfile

        with zipfile.ZipFile(path) as zf:
            return {n.split("/", 1)[1]: zf.read(n) for n in zf.namelist() if "/data/" in n}
    obj = torch.load(path, weights_only=True, map_location="cpu")
    return {
        k: (str(v.dtype), tuple(v.shape), v.view(torch.uint8) if v.dim() else v)
        for k, v in obj.items()
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return (
            isinstance(b, tuple)
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return bool(a == b)


def check(committed: Path) -> int:
    """Regenerate in a temporary directory; every file must hold the same contents."""
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        names = sorted(p.name for p in Path(tmp).iterdir())
        bad = [
            n
            for n in names
            if not (committed / n).exists()
            or not _same(_contents(Path(tmp) / n), _contents(committed / n))
        ]
    if bad:
        print(f"golden files differ from what make_golden.py makes: {', '.join(bad)}")
        return 1
    print(f"golden files match: {len(names)} files")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="regenerate in a temp dir and compare")
    args = parser.parse_args()
    if args.check:
        return check(HERE)
    for name in ("f2_sharded",):
        shutil.rmtree(HERE / name, ignore_errors=True)
    manifest = build(HERE)
    print(f"wrote {len(manifest['files'])} golden files to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
