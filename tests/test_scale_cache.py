"""LinearQuant encodes a float32 scale once and invalidates the cached int64 param.

Each case changes ``scale`` or ``offset`` in one way and checks the next forward
against the independent oracle computed from the new values, plus the number of
encodings performed, so a stale cache and a cache that never hits both fail.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import oracle
import pytest
import torch
from conftest import as_numpy

import compat
from compat.nn import linear_quant

I8, I32, F16 = torch.int8, torch.int32, torch.float16
OUT_NAMES = {I8: "int8", F16: "float16", torch.bfloat16: "bfloat16", I32: "int32"}
K, N = 48, 6


class Counter:
    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> torch.Tensor:
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.fixture
def encodings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    """Counts the encodings LinearQuant performs (its module-level trans_quant_param)."""
    counter = Counter(linear_quant.trans_quant_param)
    monkeypatch.setattr(linear_quant, "trans_quant_param", counter)
    yield counter


def _module(output_dtype: torch.dtype = F16, offset: bool = False) -> compat.LinearQuant:
    g = torch.Generator().manual_seed(0)
    m = compat.LinearQuant(K, N, offset=offset, output_dtype=output_dtype)
    with torch.no_grad():
        m.weight.copy_(torch.randint(-128, 128, (N, K), dtype=I8, generator=g))
        m.scale.copy_(torch.rand(N, generator=g) * 1e-3 + 1e-4)
        m.bias.copy_(torch.randint(-5000, 5000, (N,), dtype=I32, generator=g))
        if offset:
            m.offset.copy_((torch.rand(N, generator=g) - 0.5) * 60)
    return m


def _x(m: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(-128, 128, (m, K), dtype=I8, generator=g)


def module_oracle(m: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The oracle's output for a LinearQuant-like module's current parameter values
    (float32 scale, int32 bias; also used by test_compile.py)."""
    return oracle.quant_matmul(
        x.numpy(),
        m.weight.detach().numpy().T,
        m.scale.detach().numpy(),
        offset=None if m.offset is None else m.offset.detach().numpy(),
        bias=m.bias.detach().numpy(),
        bias_kind="int32",
        out=OUT_NAMES[m.output_dtype],
        scale_kind="float32",
    )


def _check(m: compat.LinearQuant, x: torch.Tensor) -> np.ndarray:
    got = as_numpy(m(x))
    want = module_oracle(m, x)
    np.testing.assert_array_equal(got, want)
    return got


def _changed(before: np.ndarray, after: np.ndarray) -> bool:
    return not np.array_equal(before, after)


# ------------------------------------------------------------------ caching itself
def test_encodes_once_and_matches_pre_encoded(encodings: Counter) -> None:
    m, x = _module(), _x()
    first = _check(m, x)
    for _ in range(4):
        np.testing.assert_array_equal(as_numpy(m(x)), first)
    assert encodings.calls == 1
    pre = _module()
    pre.scale = torch.nn.Parameter(compat.trans_quant_param(pre.scale), requires_grad=False)
    np.testing.assert_array_equal(as_numpy(pre(x)), first)


def test_no_encoding_when_scale_is_not_encoded(encodings: Counter) -> None:
    m = _module(output_dtype=torch.bfloat16)  # bf16 output keeps the float32 scale (L3)
    m(_x())
    m.scale = torch.nn.Parameter(compat.trans_quant_param(m.scale.detach()), requires_grad=False)
    m.output_dtype = F16
    m(_x())
    assert encodings.calls == 0


def test_entry_is_not_reused_after_the_encoding_rule_changes(encodings: Counter) -> None:
    # cached under float16 output; bfloat16 output takes the float32 scale itself (the op
    # refuses an int64 scale there), so a reused entry would raise instead of matching
    m, x = _module(), _x()
    _check(m, x)
    m.output_dtype = torch.bfloat16
    _check(m, x)
    assert encodings.calls == 1
    m.output_dtype = F16  # the float16 entry is still valid: reused, not re-encoded
    _check(m, x)
    assert encodings.calls == 1
    # a pertoken scale switches the rule off too (same float16 output): the op then gets
    # the float32 scale, not the cached int64 param
    xs = _x()
    m.pertoken_scale = torch.nn.Parameter(
        torch.rand(xs.shape[0], generator=torch.Generator().manual_seed(2)) + 0.5,
        requires_grad=False,
    )
    want = oracle.quant_matmul(
        xs.numpy(),
        m.weight.detach().numpy().T,
        m.scale.detach().numpy(),
        pertoken=m.pertoken_scale.detach().numpy(),
        bias=m.bias.detach().numpy(),
        bias_kind="int32",
        out="float16",
        scale_kind="float32",
    )
    np.testing.assert_array_equal(as_numpy(m(xs)), want)
    assert encodings.calls == 1


# ------------------------------------------------------------------ invalidation
def test_new_parameter(encodings: Counter) -> None:
    m, x = _module(), _x()
    before = _check(m, x)
    m.scale = torch.nn.Parameter(m.scale.detach() * 3, requires_grad=False)
    assert _changed(before, _check(m, x))
    assert encodings.calls == 2


def test_data_assignment(encodings: Counter) -> None:
    m, x = _module(), _x()
    before = _check(m, x)
    m.scale.data = m.scale.detach() * 0.5
    assert _changed(before, _check(m, x))
    # once more with a tensor of the same shape: the old storage is still held by the
    # cache entry, so the new one cannot take over its address and look unchanged
    m.scale.data = torch.full((N,), 2e-3)
    _check(m, x)
    assert encodings.calls == 3


def test_data_assignment_of_a_view_with_another_shape(encodings: Counter) -> None:
    m, x = _module(), _x()
    before = _check(m, x)
    m.scale.data = m.scale.data[:1]  # same data pointer, shape (1,): broadcast scale
    assert _changed(before, _check(m, x))
    assert encodings.calls == 2


@pytest.mark.parametrize("how", ["mul_", "copy_", "index"])
def test_in_place_on_the_parameter(encodings: Counter, how: str) -> None:
    m, x = _module(), _x()
    before = _check(m, x)
    with torch.no_grad():
        if how == "mul_":
            m.scale.mul_(1.75)
        elif how == "copy_":
            m.scale.copy_(torch.linspace(1e-4, 2e-3, N))
        else:
            m.scale[2] = 5e-3
    assert _changed(before, _check(m, x))
    assert encodings.calls == 2


def test_offset_changes(encodings: Counter) -> None:
    m, x = _module(output_dtype=I8, offset=True), _x()
    with torch.no_grad():
        m.scale.fill_(0.004)  # keep int8 outputs away from saturation
    before = _check(m, x)
    with torch.no_grad():
        m.offset.add_(17)
    after_inplace = _check(m, x)
    assert _changed(before, after_inplace)
    m.offset = torch.nn.Parameter(m.offset.detach() - 40, requires_grad=False)
    assert _changed(after_inplace, _check(m, x))
    assert encodings.calls == 3


@pytest.mark.parametrize("assign", [False, True])
def test_load_state_dict(encodings: Counter, assign: bool) -> None:
    m, x = _module(), _x()
    before = _check(m, x)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    state["scale"] = state["scale"] * 4
    m.load_state_dict(state, assign=assign)
    assert _changed(before, _check(m, x))
    assert encodings.calls == 2


def test_load_state_dict_of_a_parent_module(encodings: Counter) -> None:
    model = torch.nn.Sequential(_module())
    x = _x()
    before = _check(model[0], x)
    state = model.state_dict()
    state["0.scale"] = state["0.scale"] * -1
    model.load_state_dict(state)
    assert _changed(before, _check(model[0], x))


def test_device_move_drops_the_cache(encodings: Counter) -> None:
    m, x = _module(), _x()
    _check(m, x)
    m.to("meta")
    assert linear_quant._scale_cache.ATTRIBUTE not in m.__dict__
    out = m(x.to("meta"))
    assert out.device.type == "meta" and tuple(out.shape) == (5, N) and out.dtype == F16
    m.to_empty(device="cpu")
    reference = _module()
    m.load_state_dict(reference.state_dict())
    _check(m, x)


def test_writes_through_data_need_clear_scale_cache(encodings: Counter) -> None:
    # documented limitation: `.data` is an alias with its own version counter, so an
    # in-place write through it is invisible; clear_scale_cache() makes it visible
    m, x = _module(), _x()
    before = _check(m, x)
    m.scale.data.mul_(3)
    np.testing.assert_array_equal(as_numpy(m(x)), before)  # stale, as documented
    m.clear_scale_cache()
    assert _changed(before, _check(m, x))
    assert encodings.calls == 2


def test_inference_tensors_are_not_cached(encodings: Counter) -> None:
    with torch.inference_mode():
        m, x = _module(), _x()
        before = _check(m, x)
        m.scale.mul_(2)  # inference tensors have no version counter
        assert _changed(before, _check(m, x))
    assert encodings.calls == 2


def test_copies_and_pickles_recompute(encodings: Counter) -> None:
    m, x = _module(), _x()
    before = _check(m, x)
    clone = copy.deepcopy(m)
    with torch.no_grad():
        clone.scale.mul_(2)
    assert _changed(before, _check(clone, x))
    np.testing.assert_array_equal(_check(m, x), before)  # the original is unaffected
    buffer = io.BytesIO()
    torch.save(m, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    np.testing.assert_array_equal(_check(loaded, x), before)


def test_state_dict_has_no_cache_entry() -> None:
    m = _module()
    m(_x())
    assert set(m.state_dict()) == {"weight", "scale", "bias"}


def test_legacy_adapter_inherits_the_cache(encodings: Counter) -> None:
    cls = compat.LinearA8W8Quant  # a broken export fails here, it is never a skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = cls(K, N, output_dtype=F16)
    m.load_state_dict(_module().state_dict())
    x = _x()
    before = _check(m, x)
    m(x)
    with torch.no_grad():
        m.scale.mul_(0.5)
    assert _changed(before, _check(m, x))
    assert encodings.calls == 2
