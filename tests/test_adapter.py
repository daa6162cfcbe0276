"""compat.LinearA8W8Quant: legacy constructor forms, their mapping, outputs, validation."""

from __future__ import annotations

import copy
import io
import pickle
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import compat
from compat import LinearA8W8Quant, LinearA8W8QuantDeprecationWarning, LinearQuant
from compat.nn import linear_a8w8_quant as adapter_module
from compat.nn.linear_a8w8_quant import replacement_call, replacement_kwargs

K, N, M = 32, 24, 5


def build(*args: Any, **kwargs: Any) -> LinearA8W8Quant:
    """Construct without letting the (expected) deprecation warning escape ``-W error``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LinearA8W8QuantDeprecationWarning)
        return LinearA8W8Quant(*args, **kwargs)


def _mapped(
    bias: bool = True, offset: bool = False, pertoken: bool = False, out: torch.dtype = torch.int8
) -> dict[str, Any]:
    return {"bias": bias, "offset": offset, "pertoken_scale": pertoken, "output_dtype": out}


# (id, positional args after (K, N), keyword args, the LinearQuant keywords they mean)
FORMS: list[tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any]]] = [
    ("A1-defaults", (), {}, _mapped()),
    ("A1-docstring-bias-False", (False,), {}, _mapped(bias=False)),
    ("A1-bias-offset", (True, True), {}, _mapped(offset=True)),
    ("A1-no-bias-offset-device", (False, True, "cpu"), {}, _mapped(bias=False, offset=True)),
    ("A1-dtype-ignored", (True, False, None, torch.float16), {}, _mapped()),
    ("A5-any-dtype-value-ignored", (), {"dtype": "float16"}, _mapped()),  # as upstream
    ("A3-output-None", (True, True, None, None, None), {}, _mapped(offset=True)),
    ("A3-output-fp16", (True, False, None, None, torch.float16), {}, _mapped(out=torch.float16)),
    (
        "A3-output-bf16",
        (False, False, None, None, torch.bfloat16),
        {},
        _mapped(bias=False, out=torch.bfloat16),
    ),
    ("A3-string-int8", (True, True, None, None, "int8"), {}, _mapped(offset=True)),
    ("A3-string-float16", (True, False, None, None, "float16"), {}, _mapped(out=torch.float16)),
    ("A3-string-fp16", (True, False, None, None, "fp16"), {}, _mapped(out=torch.float16)),
    (
        "A3-string-half",
        (False, False, None, None, "half"),
        {},
        _mapped(bias=False, out=torch.float16),
    ),
    ("A3-string-bfloat16", (True, False, None, None, "bfloat16"), {}, _mapped(out=torch.bfloat16)),
    ("A3-string-bf16", (True, False, None, None, "BF16"), {}, _mapped(out=torch.bfloat16)),
    (
        "A3-mixed-positional-keyword",
        (False,),
        {"output_dtype": "fp16"},
        _mapped(bias=False, out=torch.float16),
    ),
    ("A5-keywords", (), {"bias": False, "offset": True}, _mapped(bias=False, offset=True)),
    (
        "A5-pertoken-fp16",
        (),
        {"pertoken_scale": True, "output_dtype": torch.float16},
        _mapped(pertoken=True, out=torch.float16),
    ),
    (
        "A5-pertoken-bf16",
        (),
        {"pertoken_scale": True, "output_dtype": torch.bfloat16, "bias": False},
        _mapped(bias=False, pertoken=True, out=torch.bfloat16),
    ),
    ("A5-bf16", (), {"output_dtype": torch.bfloat16}, _mapped(out=torch.bfloat16)),
    (
        "A5-device-dtype",
        (),
        {"device": "cpu", "dtype": torch.float16, "output_dtype": None},
        _mapped(),
    ),
    (
        "A5-string-bf16",
        (),
        {"output_dtype": "bf16", "pertoken_scale": True},
        _mapped(pertoken=True, out=torch.bfloat16),
    ),
]


def _fill(
    module: nn.Module, gen: torch.Generator, scale_dtype: torch.dtype = torch.float32
) -> None:
    n, k = module.weight.shape
    with torch.no_grad():
        module.weight.data = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
        scale = (torch.rand(n, generator=gen) + 0.5) * (8.0 / (k**0.5 * 74 * 74))
        module.scale.data = scale.to(scale_dtype)
        if module.offset is not None:
            module.offset.data = torch.randn(n, generator=gen) * 9
        if module.bias is not None:
            module.bias.data = torch.randint(-3000, 3000, (n,), dtype=torch.int32, generator=gen)
        if module.pertoken_scale is not None:
            module.pertoken_scale.data = torch.rand(M, generator=gen) + 0.5


def _copy_of(legacy: nn.Module, new: LinearQuant) -> LinearQuant:
    """``new`` with ``legacy``'s parameters (dtypes and shapes included)."""
    if new.pertoken_scale is not None:  # sized (m,) per batch, not (out_features,)
        new.pertoken_scale.data = torch.empty_like(legacy.pertoken_scale)
    new.load_state_dict(legacy.state_dict(), assign=True)
    return new


@pytest.mark.parametrize(("form", "args", "kwargs", "expected"), FORMS, ids=[f[0] for f in FORMS])
def test_every_legacy_form_is_bit_identical_to_the_mapped_linear_quant(
    form: str, args: tuple[Any, ...], kwargs: dict[str, Any], expected: dict[str, Any]
) -> None:
    legacy = build(K, N, *args, **kwargs)
    assert replacement_kwargs(legacy) == {
        "in_features": K,
        "out_features": N,
        "device": torch.device("cpu"),
        **expected,
    }
    gen = torch.Generator().manual_seed(len(form))
    _fill(legacy, gen)
    # The reference is built from the expectation written above, not from the adapter.
    new = _copy_of(legacy, LinearQuant(K, N, **expected))
    x = torch.randint(-128, 128, (M, K), dtype=torch.int8, generator=gen)
    y_legacy, y_new = legacy(x), new(x)
    assert y_legacy.dtype == expected["output_dtype"]
    assert y_legacy.shape == (M, N)
    assert torch.equal(y_legacy, y_new)
    assert y_legacy.abs().max().item() > 0  # a real computation, not all zeros
    # and the mapping function gives the same module
    again = _copy_of(legacy, LinearQuant(**replacement_kwargs(legacy)))
    assert torch.equal(again(x), y_legacy)


@pytest.mark.parametrize(
    ("scale_dtype", "kwargs"),
    [
        (torch.int64, {"offset": True}),  # pre-encoded quant param (e.g. after torchair)
        (torch.bfloat16, {"output_dtype": torch.bfloat16}),
        (torch.float32, {"output_dtype": torch.bfloat16, "bias": True}),
    ],
)
def test_other_legal_parameter_dtypes_are_bit_identical(
    scale_dtype: torch.dtype, kwargs: dict[str, Any]
) -> None:
    legacy = build(K, N, **kwargs)
    gen = torch.Generator().manual_seed(3)
    _fill(legacy, gen)
    if scale_dtype == torch.int64:
        legacy.scale.data = compat.trans_quant_param(legacy.scale.data, legacy.offset.data)
    else:
        legacy.scale.data = legacy.scale.data.to(scale_dtype)
    if legacy.output_dtype == torch.bfloat16 and legacy.bias is not None:
        legacy.bias.data = torch.randn(N, generator=gen).to(torch.bfloat16)
    new = _copy_of(legacy, LinearQuant(**replacement_kwargs(legacy)))
    x = torch.randint(-128, 128, (2, M, K), dtype=torch.int8, generator=gen)
    assert torch.equal(legacy(x), new(x))


def test_is_a_true_subclass_of_linear_quant_and_keeps_its_state_dict_layout() -> None:
    legacy = build(K, N, True, True)
    assert isinstance(legacy, LinearQuant)
    assert issubclass(LinearA8W8Quant, LinearQuant)
    new = LinearQuant(K, N, bias=True, offset=True)
    assert list(legacy.state_dict()) == list(new.state_dict())
    assert {k: v.dtype for k, v in legacy.state_dict().items()} == {
        k: v.dtype for k, v in new.state_dict().items()
    }
    assert compat.LinearA8W8Quant is compat.nn.LinearA8W8Quant is LinearA8W8Quant


def test_output_dtype_none_is_pinned_to_int8_before_linear_quant_sees_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[object] = []
    original = LinearQuant.__init__

    def spy(self: LinearQuant, *args: Any, **kwargs: Any) -> None:
        seen.append(kwargs.get("output_dtype"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(LinearQuant, "__init__", spy)
    m = build(K, N)
    assert seen == [torch.int8]
    assert m.output_dtype is torch.int8


def test_device_is_honoured_and_named_in_the_replacement() -> None:
    m = build(K, N, False, True, "meta")
    assert {p.device.type for p in m.parameters()} == {"meta"}
    assert replacement_call(m) == (
        f"LinearQuant({K}, {N}, bias=False, offset=True, device='meta', output_dtype=torch.int8)"
    )
    assert replacement_kwargs(m)["device"] == torch.device("meta")


def test_replacement_call_text() -> None:
    m = build(512, 128, offset=True)
    assert (
        replacement_call(m)
        == "LinearQuant(512, 128, bias=True, offset=True, output_dtype=torch.int8)"
    )
    m = build(16, 8, bias=False, pertoken_scale=True, output_dtype="bf16")
    assert replacement_call(m) == (
        "LinearQuant(16, 8, bias=False, offset=False, pertoken_scale=True, output_dtype=torch.bfloat16)"
    )


class _UpstreamA3(nn.Module):
    """The state of a torch_npu LinearA8W8Quant of variant A3 (no pertoken_scale attribute,
    string output_dtype of a torch 2.0 build), as unpickling leaves it."""

    def __init__(self, output_dtype: object) -> None:
        super().__init__()
        self.in_features, self.out_features = 6, 4
        self.weight = nn.Parameter(torch.empty(4, 6), requires_grad=False)
        self.scale = nn.Parameter(torch.empty(4), requires_grad=False)
        self.offset = nn.Parameter(torch.empty(4), requires_grad=False)
        self.bias = None
        self.output_dtype = output_dtype


def test_replacement_kwargs_reads_upstream_modules_of_older_variants() -> None:
    assert replacement_kwargs(_UpstreamA3("float16")) == {
        "in_features": 6,
        "out_features": 4,
        "bias": False,
        "offset": True,
        "pertoken_scale": False,
        "device": torch.device("cpu"),
        "output_dtype": torch.float16,
    }
    assert replacement_call(_UpstreamA3(None)) == (
        "LinearQuant(6, 4, bias=False, offset=True, output_dtype=torch.int8)"
    )
    with pytest.raises(ValueError, match=r"int32.*LinearQuant\(\.\.\., output_dtype=torch.int32\)"):
        replacement_kwargs(_UpstreamA3(torch.int32))
    with pytest.raises(TypeError, match="Linear is not a LinearA8W8Quant-like module"):
        replacement_kwargs(nn.Linear(2, 2))


@pytest.mark.parametrize("value", [torch.int32, "int32", "INT32"])
def test_int32_output_stays_rejected_pointing_to_linear_quant(value: object) -> None:
    with pytest.raises(ValueError) as err:
        build(K, N, output_dtype=value)
    text = str(err.value)
    assert "'output_dtype'" in text and repr(value) in text
    assert "LinearQuant(..., output_dtype=torch.int32)" in text


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"bias": 1, "offset": 0}, ("bias",)),
        ({"bias": None, "offset": 1}, ("offset",)),
        ({"bias": 0, "pertoken_scale": None}, ()),
        ({"bias": np.True_, "pertoken_scale": 1}, ("pertoken_scale", "bias")),
    ],
)
def test_truthy_flags_are_accepted_like_upstream(
    flags: dict[str, Any], expected: tuple[str, ...]
) -> None:
    m = build(K, N, **flags)
    present = tuple(k for k in ("offset", "pertoken_scale", "bias") if getattr(m, k) is not None)
    assert sorted(present) == sorted(expected)


@pytest.mark.parametrize(
    ("kwargs", "error", "fragments"),
    [
        (
            {"output_dtype": torch.float32},
            ValueError,
            ["'output_dtype'", "torch.float32", "torch.bfloat16 ('bfloat16', 'bf16')"],
        ),
        (
            {"output_dtype": "fp32"},
            ValueError,
            ["'output_dtype'", "'fp32'", "torch.int8 (also None, 'int8')"],
        ),
        (
            {"output_dtype": 8},
            TypeError,
            ["'output_dtype'", "int 8", "torch.float16 ('float16', 'fp16', 'half')"],
        ),
        ({"bias": "False"}, TypeError, ["'bias'", "str 'False'", "True or False"]),
        ({"offset": "yes"}, TypeError, ["'offset'", "str 'yes'", "True or False"]),
    ],
)
def test_bad_arguments_name_the_parameter_the_value_and_what_is_allowed(
    kwargs: dict[str, Any], error: type[Exception], fragments: list[str]
) -> None:
    with pytest.raises(error) as err:
        build(K, N, **kwargs)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_positional_argument_errors() -> None:
    with pytest.raises(TypeError, match=r"takes from 3 to 8 positional arguments but 9 were given"):
        build(K, N, True, False, None, None, None, "extra")
    with pytest.raises(TypeError, match="multiple values for argument 'bias'"):
        build(K, N, False, bias=True)
    with pytest.raises(TypeError, match="multiple values for argument 'output_dtype'"):
        build(K, N, True, False, None, None, torch.float16, output_dtype=torch.float16)
    with pytest.raises(ValueError, match="'in_features' must be a positive int, got 0"):
        build(0, N)


def test_keyword_in_and_out_features() -> None:
    m = build(in_features=K, out_features=N, bias=False)
    assert (m.in_features, m.out_features, m.bias) == (K, N, None)


# --- forward validation of variant A8 (docs/ops.md §3.3) ---------------------------------------


def _ready(**kwargs: Any) -> tuple[LinearA8W8Quant, torch.Tensor]:
    m = build(K, N, **kwargs)
    _fill(m, torch.Generator().manual_seed(1))
    return m, torch.randint(-128, 128, (M, K), dtype=torch.int8)


@pytest.mark.parametrize(
    ("mutate", "fragments"),
    [
        (
            lambda m: setattr(m.scale, "data", m.scale.data.half()),
            [
                "'scale' has dtype torch.float16",
                "allowed: torch.int64, torch.bfloat16, torch.float32",
            ],
        ),
        (
            lambda m: setattr(m.offset, "data", m.offset.data.double()),
            ["'offset' has dtype torch.float64", "allowed: torch.float32"],
        ),
        (
            lambda m: setattr(m.bias, "data", m.bias.data.to(torch.int8)),
            [
                "'bias' has dtype torch.int8",
                "allowed: torch.int32, torch.float16, torch.bfloat16, torch.float32",
            ],
        ),
        (
            lambda m: setattr(m, "output_dtype", torch.int32),
            [
                "output_dtype is torch.int32",
                "allowed: torch.int8, torch.float16, torch.bfloat16, None",
                "use LinearQuant for int32 output",
            ],
        ),
        (lambda m: setattr(m, "output_dtype", torch.float32), ["output_dtype is torch.float32"]),
        (
            lambda m: setattr(m.weight, "data", m.weight.data.to(torch.int32)),
            [
                "input has dtype torch.int8 and weight has dtype torch.int32",
                "allowed: both torch.int8 (A8W8) or both torch.int32 (A4W4)",
            ],
        ),
    ],
)
def test_forward_validation_of_variant_a8(mutate: Any, fragments: list[str]) -> None:
    m, x = _ready(offset=True)
    mutate(m)
    with pytest.raises(ValueError) as err:
        m(x)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_forward_validation_of_pertoken_scale_and_input() -> None:
    m, x = _ready(pertoken_scale=True, output_dtype=torch.float16)
    m.pertoken_scale.data = m.pertoken_scale.data.to(torch.float16)
    with pytest.raises(
        ValueError, match=r"'pertoken_scale' has dtype torch.float16; allowed: torch.float32"
    ):
        m(x)
    m, x = _ready()
    with pytest.raises(
        ValueError, match=r"input has dtype torch\.float32 and weight has dtype torch\.int8"
    ):
        m(x.float())
    with pytest.raises(TypeError, match=r"input must be a torch\.Tensor, got list"):
        m([1, 2])  # type: ignore[arg-type]


def test_forward_accepts_output_dtype_none_like_unpickled_upstream_modules() -> None:
    m, x = _ready(offset=True)
    expected = m(x)
    m.output_dtype = None  # what an unpickled upstream LinearA8W8Quant carries
    y = m(x)
    assert y.dtype == torch.int8 and torch.equal(y, expected)


def test_a_pickle_of_a_variant_before_a5_prints_and_runs() -> None:
    # what unpickling an A1/A2 module gives: its own attributes only (no output_dtype
    # before A3, no pertoken_scale before A5), restored without running __init__
    m, x = _ready(offset=True)
    old = LinearA8W8Quant.__new__(LinearA8W8Quant)
    torch.nn.Module.__init__(old)
    old.in_features, old.out_features = K, N
    for name in ("weight", "scale", "offset", "bias"):
        old.register_parameter(name, getattr(m, name))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation warning: __init__ does not run
        loaded = pickle.loads(pickle.dumps(old))
    assert "pertoken_scale=False, output_dtype=None" in repr(loaded)
    y = loaded(x)
    assert y.dtype == torch.int8 and torch.equal(y, m(x))  # None means int8, as in A5


# --- copies and pickles do not re-run __init__ (no second warning) -------------------------


def test_deepcopy_and_pickle_keep_the_class_and_do_not_warn() -> None:
    m, x = _ready(offset=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twin = copy.deepcopy(m)
        buffer = io.BytesIO()
        torch.save(m, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
    for other in (twin, loaded):
        assert type(other) is LinearA8W8Quant
        assert torch.equal(other(x), m(x))


def test_exported_names() -> None:
    assert set(adapter_module.__all__) == {
        "LinearA8W8Quant",
        "replacement_call",
        "replacement_kwargs",
    }
    assert {
        "LinearA8W8Quant",
        "LinearA8W8QuantDeprecationWarning",
        "install_legacy_imports",
    } <= set(compat.__all__)


def test_the_signature_shows_the_legacy_parameters_and_defaults() -> None:
    import inspect

    signature = inspect.signature(LinearA8W8Quant)
    assert str(signature) == (
        "(in_features, out_features, bias=True, offset=False, device=None, dtype=None, "
        "output_dtype=None, *, pertoken_scale=False)"
    )
    for args, kwargs in [
        ((4, 8, False, True), {}),
        ((4, 8), {"bias": False, "pertoken_scale": True}),
    ]:
        signature.bind(*args, **kwargs)  # both legacy forms bind
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            LinearA8W8Quant(*args, **kwargs)  # and construct
