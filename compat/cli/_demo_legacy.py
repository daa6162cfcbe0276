"""Demo section: legacy LinearA8W8Quant code, where its warning points, bit-equality.

A small "user" file is written to a temporary folder and run: it builds LinearA8W8Quant
in several legacy forms. The section checks that each deprecation warning points at the
user's line (not into compat), and that every layer's output equals, bit for bit, that of
the LinearQuant the warning proposes.
"""

from __future__ import annotations

import argparse
import runpy
import tempfile
import warnings
from pathlib import Path

import torch

from compat import LinearA8W8QuantDeprecationWarning, LinearQuant
from compat.nn.linear_a8w8_quant import replacement_call, replacement_kwargs
from compat.ops.backend import active_backend

# line in LEGACY_SOURCE -> the legacy call on it
LEGACY_CALLS = {
    5: "LinearA8W8Quant(64, 32, False)",
    6: "LinearA8W8Quant(64, 32, True, True)",
    7: "LinearA8W8Quant(64, 32, output_dtype='fp16')",
    8: "LinearA8W8Quant(64, 32, pertoken_scale=True, output_dtype=torch.bfloat16)",
}
LEGACY_SOURCE = (
    "import torch\nfrom compat import LinearA8W8Quant\n\nlayers = [\n"
    + "".join(f"    {call},\n" for call in LEGACY_CALLS.values())
    + "]\n"
)


def _fill(layer: LinearQuant, gen: torch.Generator, m: int) -> None:
    n, k = layer.weight.shape
    with torch.no_grad():
        layer.weight.data = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
        layer.scale.data = (torch.rand(n, generator=gen) + 0.5) * (20.0 / (k**0.5 * 74 * 74))
        if layer.offset is not None:
            layer.offset.data = torch.randn(n, generator=gen) * 5
        if layer.bias is not None:
            layer.bias.data = torch.randint(-500, 500, (n,), dtype=torch.int32, generator=gen)
        if layer.pertoken_scale is not None:
            layer.pertoken_scale.data = torch.rand(m, generator=gen) + 0.5


def run_section(args: argparse.Namespace) -> bool:
    device = args.device
    gen = torch.Generator().manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "legacy_model.py"
        script.write_text(LEGACY_SOURCE)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always", LinearA8W8QuantDeprecationWarning)
            layers = runpy.run_path(str(script))["layers"]
    shown = [w for w in record if issubclass(w.category, LinearA8W8QuantDeprecationWarning)]
    m = 4
    x = torch.randint(-128, 128, (m, 64), dtype=torch.int8, generator=gen)
    print(f"backend: {active_backend(device)} on {device}; legacy code in legacy_model.py")
    print(f"{'line':<5} {'warning at':<20} {'output':<15} {'bit-equal':<9} replacement")
    ok = len(shown) == len(LEGACY_CALLS)
    for (line, call), layer, warning in zip(LEGACY_CALLS.items(), layers, shown, strict=False):
        _fill(layer, gen, m)
        layer.to(device)
        new = LinearQuant(**{**replacement_kwargs(layer), "device": device})
        if new.pertoken_scale is not None:
            new.pertoken_scale.data = torch.empty_like(layer.pertoken_scale)
        new.load_state_dict(layer.state_dict(), assign=True)
        y_old, y_new = layer(x.to(device)), new(x.to(device))
        equal = bool(torch.equal(y_old, y_new)) and y_old.dtype == y_new.dtype
        where = f"{Path(warning.filename).name}:{warning.lineno}"
        points_home = warning.filename == str(script) and warning.lineno == line
        replacement = replacement_call(layer)
        ok &= equal and points_home and replacement in str(warning.message)
        print(
            f"{line:<5} {where:<20} {y_old.dtype!s:<15} {'yes' if equal else 'NO':<9} "
            f"{replacement}{'' if points_home else '  (warning points elsewhere!)'}"
        )
        print(f"{'':<5} was: {call}")
    return ok
