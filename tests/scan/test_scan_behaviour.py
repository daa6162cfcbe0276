"""Fixes preserve behaviour: a legacy snippet and its ``--fix`` output, run on the reference
backend (CPU), build modules that give bit-identical outputs; only the legacy one warns.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

import compat
from compat.scan import fix_source

SNIPPETS = {
    "positional": """\
import torch
from compat import LinearA8W8Quant

layers = [
    LinearA8W8Quant(16, 8, False),
    LinearA8W8Quant(16, 8, True, True),
    LinearA8W8Quant(16, 8, True, False, None, None, None),
    LinearA8W8Quant(16, 8, False, False, "cpu", None, "float16"),
    LinearA8W8Quant(16, 8, True, False, None, None, "bf16"),
]
""",
    "keyword": """\
import torch
from compat import LinearA8W8Quant

layers = [
    LinearA8W8Quant(16, 8),
    LinearA8W8Quant(16, 8, bias=False, offset=True, output_dtype=None),
    LinearA8W8Quant(16, 8, output_dtype="half"),
    LinearA8W8Quant(
        in_features=16,
        out_features=8,
        output_dtype=torch.bfloat16,  # keyword form of later versions
    ),
    LinearA8W8Quant(16, 8, pertoken_scale=True, output_dtype=torch.float16),
]
""",
    "no_torch_import": """\
import compat

layers = [compat.LinearA8W8Quant(16, 8, True, True), compat.LinearA8W8Quant(16, 8, output_dtype="int8")]
""",
    "aliases": """\
import functools

import torch
from compat import LinearA8W8Quant as Legacy

Factory = Legacy
make = functools.partial(Legacy, 16, 8, False)
layers = [Factory(16, 8, False, True), make(offset=True), make(output_dtype=torch.float16)]
""",
    # torch is bound for type checkers only: the fix must import it for real
    "type_checking_torch": """\
from typing import TYPE_CHECKING

from compat import LinearA8W8Quant

if TYPE_CHECKING:
    import torch

layers = [LinearA8W8Quant(16, 8, False), LinearA8W8Quant(16, 8, True, True)]
""",
    # the module-level import comes after the module-level calls
    "torch_imported_late": """\
from compat import LinearA8W8Quant

layers = [LinearA8W8Quant(16, 8), LinearA8W8Quant(16, 8, output_dtype="fp16")]

import torch  # noqa: E402
""",
    # a legacy string held by a module-level constant is mapped, not passed on
    "dtype_constant": """\
import torch
from compat import LinearA8W8Quant

DT = "fp16"
layers = [
    LinearA8W8Quant(16, 8, output_dtype=DT),
    LinearA8W8Quant(16, 8, False, False, None, None, DT),
]
""",
    # the adapter compares dtype strings case-insensitively
    "uppercase_strings": """\
from compat import LinearA8W8Quant

layers = [
    LinearA8W8Quant(16, 8, False, False, None, None, "FP16"),
    LinearA8W8Quant(16, 8, output_dtype="BF16"),
    LinearA8W8Quant(16, 8, output_dtype="Int8"),
    LinearA8W8Quant(16, 8, True, False, output_dtype="HALF"),
]
""",
}


def _run(source: str, name: str) -> tuple[list[torch.nn.Module], list[warnings.WarningMessage]]:
    namespace: dict[str, Any] = {"__name__": name}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(source, f"{name}.py", "exec"), namespace)
    layers = namespace["layers"]
    assert isinstance(layers, list)
    return layers, caught


def _randomise(layer: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in layer.state_dict().items():
        if key == "weight":
            state[key] = torch.randint(
                -128, 128, value.shape, dtype=torch.int8, generator=generator
            )
        elif key == "bias":
            state[key] = torch.randint(
                -500, 500, value.shape, dtype=torch.int32, generator=generator
            )
        elif key == "offset":
            state[key] = torch.randint(-20, 20, value.shape, generator=generator).float()
        else:  # scale, pertoken_scale
            state[key] = torch.rand(value.shape, generator=generator) * 0.02 + 1e-3
    return state


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_fixed_snippet_matches_legacy_bit_for_bit(name: str) -> None:
    legacy = SNIPPETS[name]
    fixed, remaining, count = fix_source(legacy, f"{name}.py")
    assert remaining == [] and count > 0
    assert "LinearA8W8Quant" not in fixed

    old_layers, old_warnings = _run(legacy, f"legacy_{name}")
    new_layers, new_warnings = _run(fixed, f"fixed_{name}")

    deprecations = [
        w for w in old_warnings if issubclass(w.category, compat.LinearA8W8QuantDeprecationWarning)
    ]
    assert len(deprecations) == len(old_layers)
    assert [
        w for w in new_warnings if issubclass(w.category, DeprecationWarning | FutureWarning)
    ] == []

    generator = torch.Generator().manual_seed(2024)
    assert len(new_layers) == len(old_layers)
    for old, new in zip(old_layers, new_layers, strict=True):
        assert isinstance(old, compat.LinearA8W8Quant)
        assert type(new) is compat.LinearQuant
        assert new.output_dtype == old.output_dtype
        state = _randomise(old, generator)
        assert {k: (v.dtype, v.shape) for k, v in new.state_dict().items()} == {
            k: (v.dtype, v.shape) for k, v in old.state_dict().items()
        }
        old.load_state_dict(state)
        new.load_state_dict(state)
        rows = old.out_features if "pertoken_scale" in state else 5  # pertoken has (out,) rows
        x = torch.randint(-128, 128, (rows, old.in_features), dtype=torch.int8, generator=generator)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            expected, actual = old(x), new(x)
        assert actual.dtype == expected.dtype
        assert torch.equal(actual, expected)
