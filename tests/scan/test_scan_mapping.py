"""Property test: every legacy constructor call maps to an equivalent keyword-form call.

The oracle binds the arguments to the two constructor signatures with
``inspect.Signature.bind`` and normalises ``output_dtype`` by the documented table; it
shares no code with the fixer.
"""

from __future__ import annotations

import ast
import inspect

from hypothesis import given, settings
from hypothesis import strategies as st

from compat.scan import fix_source, scan_text

DEFAULTS = {"bias": "True", "offset": "False", "pertoken_scale": "False"}


def _signature(positional: list[str], keyword_only: list[str]) -> inspect.Signature:
    """A signature with the constructor's defaults (None where not in DEFAULTS)."""
    kinds = [(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in positional]
    kinds += [(n, inspect.Parameter.KEYWORD_ONLY) for n in keyword_only]
    return inspect.Signature(
        [
            inspect.Parameter(
                name,
                kind,
                default=inspect.Parameter.empty
                if name.endswith("features")
                else DEFAULTS.get(name, "None"),
            )
            for name, kind in kinds
        ]
    )


ORDER = ["in_features", "out_features", "bias", "offset", "device", "dtype", "output_dtype"]
# old positional form (plus the keyword pertoken_scale of later variants), and LinearQuant
LEGACY = _signature(ORDER, ["pertoken_scale"])
NEW = _signature(ORDER[:2], ["bias", "offset", "pertoken_scale", "device", "dtype", "output_dtype"])
VALUES = {
    "in_features": ["16", "hidden", "4 * hidden"],
    "out_features": ["32", "(hidden)", "cfg.out"],
    "bias": ["True", "False", "use_bias"],
    "offset": ["True", "False"],
    "device": ["None", "'cpu'", "dev"],
    "dtype": ["None", "torch.float16"],
    "output_dtype": [
        "None",
        "'int8'",
        "'float16'",
        "'fp16'",
        "'half'",
        "'bfloat16'",
        "'bf16'",
        "torch.float16",
        "torch.bfloat16",
        "torch.int8",
    ],
    "pertoken_scale": ["True", "False"],
}
# the documented output_dtype rule, written out independently of the fixer
OUTPUT_DTYPE = {
    "None": "torch.int8",
    "'int8'": "torch.int8",
    "'float16'": "torch.float16",
    "'fp16'": "torch.float16",
    "'half'": "torch.float16",
    "'bfloat16'": "torch.bfloat16",
    "'bf16'": "torch.bfloat16",
}
SEPARATORS = [", ", ",", ",\n    ", " ,  ", ",  # note\n        "]


@st.composite
def legacy_calls(draw: st.DrawFn) -> tuple[list[str], dict[str, str], str]:
    positional_count = draw(st.integers(min_value=2, max_value=7))
    names = ORDER[:positional_count]
    positional = [draw(st.sampled_from(VALUES[n])) for n in names]
    rest = [n for n in [*ORDER, "pertoken_scale"] if n not in names]
    if positional_count > 2:
        rest.remove("pertoken_scale")  # mixing both forms is reported, not fixed
    chosen = draw(st.lists(st.sampled_from(rest), unique=True)) if rest else []
    keywords = {n: draw(st.sampled_from(VALUES[n])) for n in chosen}
    parts = positional + [f"{k}={v}" for k, v in keywords.items()]
    text = parts[0]
    for part in parts[1:]:
        text += draw(st.sampled_from(SEPARATORS)) + part
    trailing = draw(st.sampled_from(["", ",", ",\n"]))
    return positional, keywords, f"LinearA8W8Quant({text}{trailing})"


def _normalise(sig: inspect.Signature, args: list[str], kwargs: dict[str, str]) -> dict[str, str]:
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    values = {
        k: ast.unparse(ast.parse(str(v), mode="eval").body) for k, v in bound.arguments.items()
    }
    values["output_dtype"] = OUTPUT_DTYPE.get(values["output_dtype"], values["output_dtype"])
    return values


@settings(max_examples=300, deadline=None)
@given(legacy_calls())
def test_fixed_call_binds_like_the_legacy_call(case: tuple[list[str], dict[str, str], str]) -> None:
    positional, keywords, call = case
    source = f"import torch\nfrom compat import LinearA8W8Quant\n\nlayer = {call}\n"
    fixed, remaining, count = fix_source(source, "case.py")
    assert remaining == []
    assert count == 2  # the import and the call
    tree = ast.parse(fixed)
    new_call = tree.body[-1].value  # type: ignore[attr-defined]
    assert isinstance(new_call, ast.Call)
    assert ast.unparse(new_call.func) == "LinearQuant"
    assert len(new_call.args) == 2  # only in/out features stay positional
    new_kwargs = {k.arg: ast.unparse(k.value) for k in new_call.keywords if k.arg}
    assert set(new_kwargs) >= {"output_dtype"}
    expected = _normalise(LEGACY, positional, keywords)
    actual = _normalise(NEW, [ast.unparse(a) for a in new_call.args], new_kwargs)
    assert actual == expected
    assert scan_text(fixed, "case.py") == []
    assert fix_source(fixed, "case.py")[0] == fixed


@settings(max_examples=100, deadline=None)
@given(legacy_calls())
def test_only_the_call_changes(case: tuple[list[str], dict[str, str], str]) -> None:
    _, _, call = case
    prefix = "import torch\nfrom compat import LinearQuant, LinearA8W8Quant  # both\n\n"
    source = f"{prefix}x = [  # keep\n    {call},\n]\n"
    fixed, _, _ = fix_source(source, "case.py")
    head = "import torch\nfrom compat import LinearQuant  # both\n\nx = [  # keep\n    "
    assert fixed.startswith(head)
    assert fixed.endswith(",\n]\n")
