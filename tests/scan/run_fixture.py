"""Run one scanned module as ``__main__`` and print what its quantized layers computed.

Usage (in a fresh interpreter, ``tests/standin`` on PYTHONPATH): ``python run_fixture.py
MODULE.py ...``. The stand-in torch_npu's two NPU ops are replaced by implementations that
compute with the numpy oracle (``tests/oracle.py``) instead of returning a marker, so
upstream's own ``LinearQuant`` (which calls them) computes real values on CPU, as on an
NPU. Every forward of a module whose class is named LinearQuant or LinearA8W8Quant is
recorded: input, weight, scale, offset, bias, output dtype and values. One JSON line is
printed per module: ``{"path", "exit", "error", "records", "layers"}``, the layers being
every quantized layer alive when the module has run (features, bias and offset present,
output dtype, None counted as int8).
"""

from __future__ import annotations

import gc
import json
import runpy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_npu  # the stand-in

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import oracle

NAMES = ("LinearQuant", "LinearA8W8Quant")
_OUT = {
    None: "int8",
    torch.int8: "int8",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int32: "int32",
}
_TORCH = {"int8": torch.int8, "float16": torch.float16, "int32": torch.int32}


def _array(tensor: torch.Tensor | None) -> np.ndarray | None:
    if tensor is None:
        return None
    elem = getattr(tensor, "elem", tensor)
    return elem.detach().cpu().numpy()


def _oracle_trans_quant_param(
    scale: torch.Tensor, offset: torch.Tensor | None = None, **_: Any
) -> torch.Tensor:
    return torch.from_numpy(oracle.encode(_array(scale), _array(offset)))


def _oracle_quant_matmul(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    *,
    offset: torch.Tensor | None = None,
    pertoken_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    output_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    out = _OUT[output_dtype]
    kind = {torch.int64: "int64", torch.bfloat16: "bfloat16"}.get(scale.dtype, "float32")
    bias_kind = None if bias is None else ("int32" if bias.dtype == torch.int32 else "float")
    result = oracle.quant_matmul(
        _array(x1),
        _array(x2),
        _array(scale.float() if kind == "bfloat16" else scale),
        offset=_array(offset),
        pertoken=_array(pertoken_scale),
        bias=_array(bias),
        bias_kind=bias_kind,
        out=out,
        scale_kind=kind,
    )
    if out == "bfloat16":
        return torch.from_numpy(result.astype(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(result).to(_TORCH[out])


def _values(tensor: torch.Tensor | None) -> Any:
    if tensor is None:
        return None
    elem = getattr(tensor, "elem", tensor).detach()
    if elem.dtype == torch.bfloat16:
        elem = elem.float()
    return elem.tolist()


records: list[dict[str, Any]] = []


def _record(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
    if type(module).__name__ not in NAMES:
        return
    records.append(
        {
            "x": _values(args[0]),
            "weight": _values(module.weight),
            "scale": _values(module.scale),
            "offset": _values(getattr(module, "offset", None)),
            "bias": _values(getattr(module, "bias", None)),
            "dtype": str(output.dtype),
            "out": _values(output),
        }
    )


def _layers() -> list[list[Any]]:
    """Every live quantized layer: features, bias/offset present, output dtype (sorted)."""
    found = []
    for obj in gc.get_objects():
        if type(obj).__name__ in NAMES and isinstance(obj, torch.nn.Module):
            dtype = getattr(obj, "output_dtype", None)
            found.append(
                [
                    obj.in_features,
                    obj.out_features,
                    getattr(obj, "bias", None) is not None,
                    getattr(obj, "offset", None) is not None,
                    str(torch.int8 if dtype is None else dtype),
                ]
            )
    return sorted(found)


def run(path: str) -> dict[str, Any]:
    """Run *path* as ``__main__``; what its layers computed, and how it ended."""
    records.clear()
    sys.argv = [path]
    result: dict[str, Any] = {"path": path, "exit": 0, "error": None}
    namespace: dict[str, Any] = {}
    try:
        namespace = runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        result["exit"] = exc.code
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["records"] = list(records)
    result["layers"] = _layers()
    namespace.clear()
    gc.collect()
    return result


def main(paths: list[str]) -> None:
    """Run each of *paths* in turn; print one JSON line per path."""
    torch_npu.npu_quant_matmul = _oracle_quant_matmul
    torch_npu.npu_trans_quant_param = _oracle_trans_quant_param
    torch.nn.modules.module.register_module_forward_hook(_record)
    for path in paths:
        print(json.dumps(run(path)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
