"""Quantization schemes of ``npu_quant_matmul``: one descriptor per scheme.

A :class:`Scheme` holds what differs between A8W8 and A4W4: the operand storage dtype,
how many values one element packs and how to unpack them, and its rows of the Atlas
A2/A3 dtype table (docs/ops.md, "Dtype table"). Every other table of legal dtypes (the
op's checks, the checkpoint rules in :mod:`compat.formats.rules`, the modules) is derived
from :data:`SCHEMES`. Adding a scheme is one new descriptor here plus its kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

_I8, _I32, _I64 = torch.int8, torch.int32, torch.int64
_F16, _BF16, _F32 = torch.float16, torch.bfloat16, torch.float32

#: Allowed dtypes per optional argument; ``None`` in a tuple means "may be omitted".
Row = Mapping[str, tuple[torch.dtype | None, ...]]

_INT4_SHIFTS = (0, 4, 8, 12, 16, 20, 24, 28)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int32 tensor of 8 packed int4 values each (LSB first) -> int8 tensor, last dim x8."""
    shifts = torch.tensor(_INT4_SHIFTS, dtype=torch.int32, device=packed.device)
    nibbles = (packed.unsqueeze(-1) >> shifts) & 0xF
    signed = torch.where(nibbles >= 8, nibbles - 16, nibbles).to(torch.int8)
    return signed.reshape(*packed.shape[:-1], packed.shape[-1] * 8)


def _identity(values: torch.Tensor) -> torch.Tensor:
    return values


@dataclass(frozen=True)
class Scheme:
    """One operand scheme of the op (see the module docstring)."""

    name: str
    #: dtype of x1, x2 and of a module's weight
    storage_dtype: torch.dtype
    #: quantized values per storage element (8 int4 per int32 for A4W4)
    pack: int
    #: storage -> int8 values, last dim times ``pack``
    unpack: Callable[[torch.Tensor], torch.Tensor]
    #: (output dtype, pertoken_scale given) -> allowed scale/offset/bias dtypes; a missing
    #: key is an illegal combination
    rows: Mapping[tuple[torch.dtype, bool], Row]

    @property
    def label(self) -> str:
        """E.g. ``"A4W4 (x1/x2 int32)"``, for messages."""
        return f"{self.name} (x1/x2 {str(self.storage_dtype).removeprefix('torch.')})"

    @property
    def output_dtypes(self) -> tuple[torch.dtype, ...]:
        """The output dtypes with at least one row, in table order."""
        return tuple(dict.fromkeys(out for out, _pertoken in self.rows))

    def row(self, output_dtype: torch.dtype, pertoken: bool) -> Row | None:
        """The allowed dtypes for this configuration, or None if it is illegal."""
        return self.rows.get((output_dtype, pertoken))


_A8_PERTOKEN_BIAS = (_I32, _F16, _F32, None)

A8W8 = Scheme(
    name="A8W8",
    storage_dtype=_I8,
    pack=1,
    unpack=_identity,
    rows={
        (_I8, False): {"scale": (_I64, _F32), "offset": (_F32, None), "bias": (_I32, None)},
        (_F16, False): {"scale": (_I64, _F32), "offset": (None,), "bias": (_I32, None)},
        (_F16, True): {"scale": (_F32,), "offset": (None,), "bias": _A8_PERTOKEN_BIAS},
        (_BF16, False): {
            "scale": (_F32, _BF16),
            "offset": (None,),
            "bias": (_I32, _BF16, _F32, None),
        },
        (_BF16, True): {
            "scale": (_F32, _BF16),
            "offset": (None,),
            "bias": (_I32, _BF16, _F32, None),
        },
        (_I32, False): {"scale": (_F32, _BF16), "offset": (None,), "bias": (_I32, None)},
    },
)

A4W4 = Scheme(
    name="A4W4",
    storage_dtype=_I32,
    pack=8,
    unpack=unpack_int4,
    rows={
        (_F16, False): {"scale": (_I64, _F32), "offset": (None,), "bias": (_I32, None)},
        (_F16, True): {"scale": (_F32,), "offset": (None,), "bias": _A8_PERTOKEN_BIAS},
        (_BF16, True): {"scale": (_F32,), "offset": (None,), "bias": (_I32, _BF16, _F32, None)},
    },
)

#: Every scheme, the default (A8W8) first.
SCHEMES: tuple[Scheme, ...] = (A8W8, A4W4)

#: Every output dtype some scheme supports, in table order.
OUTPUT_DTYPES: tuple[torch.dtype, ...] = tuple(
    dict.fromkeys(out for scheme in SCHEMES for out in scheme.output_dtypes)
)


def scheme_of(dtype: torch.dtype) -> Scheme | None:
    """The scheme whose operands are stored as ``dtype``, or None."""
    return next((s for s in SCHEMES if s.storage_dtype == dtype), None)


def storage_dtypes() -> tuple[torch.dtype, ...]:
    """The operand (and weight) dtypes of all schemes."""
    return tuple(s.storage_dtype for s in SCHEMES)


def dtypes_for(name: str, schemes: tuple[Scheme, ...] = SCHEMES) -> tuple[torch.dtype, ...]:
    """Every dtype some row of ``schemes`` allows for argument ``name`` (``"scale"``,
    ``"offset"`` or ``"bias"``), in table order."""
    found = (d for s in schemes for row in s.rows.values() for d in row[name] if d is not None)
    return tuple(dict.fromkeys(found))


def pairs_text() -> str:
    """``"both torch.int8 (A8W8) or both torch.int32 (A4W4)"``, for messages."""
    return " or ".join(f"both {s.storage_dtype} ({s.name})" for s in SCHEMES)
