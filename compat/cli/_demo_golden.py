"""The demo's golden vectors (``demo_golden.json``): inputs and expected outputs computed
once by tests/oracle.py (``tests/data/make_demo_golden.py``), so the library holds the
formula once and the demo checks it against independent data."""

from __future__ import annotations

import base64
import json
from functools import cache
from pathlib import Path
from typing import Any

import torch

PATH = Path(__file__).with_name("demo_golden.json")
_DTYPES = {
    "int8": torch.int8,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "float32": torch.float32,
}


@cache
def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PATH.read_text())
    return data


def seeds() -> tuple[int, ...]:
    """The seeds whose vectors are shipped."""
    return (int(load()["seed"]),)


def tensor(entry: dict[str, Any]) -> torch.Tensor:
    """A tensor from ``{"dtype", "shape", "data"}`` (little-endian bytes, base64)."""
    raw = bytearray(base64.b64decode(entry["data"]))
    shape = tuple(entry["shape"])
    if entry["dtype"] == "bfloat16":  # stored as its bit patterns
        bits = torch.frombuffer(raw, dtype=torch.int16).clone()
        return bits.view(torch.bfloat16).reshape(shape)
    return torch.frombuffer(raw, dtype=_DTYPES[entry["dtype"]]).clone().reshape(shape)


def compare(got: torch.Tensor, want: torch.Tensor) -> tuple[bool, int, float]:
    """(bit-identical, number of differing elements, max |difference|)."""
    got = got.cpu()
    if got.dtype != want.dtype or got.shape != want.shape:
        return False, want.numel(), float("inf")
    bits = {1: torch.int8, 2: torch.int16, 4: torch.int32}[want.element_size()]
    differ = got.view(bits) != want.view(bits)
    count = int(differ.sum())
    diff = (got.to(torch.float64) - want.to(torch.float64)).abs().max().item()
    return count == 0, count, float(diff)
