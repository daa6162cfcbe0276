"""compat.LinearQuant: upstream's contract (variant L3) with natural dtypes and devices."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
import torch
from conftest import as_numpy

import compat

I8, I32 = torch.int8, torch.int32


def _filled(m: compat.LinearQuant, seed: int = 0) -> compat.LinearQuant:
    g = torch.Generator().manual_seed(seed)
    n, k = m.out_features, m.in_features
    with torch.no_grad():
        m.weight.copy_(torch.randint(-128, 128, (n, k), dtype=I8, generator=g))
        m.scale.copy_(torch.rand(n, generator=g) * 0.01)
        if m.offset is not None:
            m.offset.copy_((torch.rand(n, generator=g) - 0.5) * 40)
        if m.bias is not None:
            m.bias.copy_(torch.randint(-5000, 5000, (n,), dtype=I32, generator=g))
    return m


def test_parameters_have_natural_dtypes_and_keys() -> None:
    m = compat.LinearQuant(16, 8, bias=True, offset=True, pertoken_scale=True)
    assert m.weight.dtype == I8 and m.weight.shape == (8, 16)
    assert m.scale.dtype == torch.float32 and m.scale.shape == (8,)
    assert m.offset.dtype == torch.float32 and m.pertoken_scale.dtype == torch.float32
    assert m.bias.dtype == I32 and m.bias.shape == (8,)
    assert list(m.state_dict()) == ["weight", "scale", "offset", "pertoken_scale", "bias"]
    assert all(not p.requires_grad for p in m.parameters())
    bare = compat.LinearQuant(16, 8, bias=False)
    assert list(bare.state_dict()) == ["weight", "scale"]
    assert bare.bias is None and bare.offset is None and bare.pertoken_scale is None
    assert bare.in_features == 16 and bare.out_features == 8 and bare.output_dtype is None


def test_numpy_and_tensor_sizes_are_accepted() -> None:
    m = compat.LinearQuant(np.int64(4), torch.tensor(3))
    assert (m.in_features, m.out_features) == (4, 3) and type(m.in_features) is int
    assert m.weight.shape == (3, 4)


def test_device_is_honoured() -> None:
    m = compat.LinearQuant(4, 3, offset=True, device="meta")
    assert {p.device.type for p in m.parameters()} == {"meta"}
    out = m(torch.empty(2, 4, dtype=I8, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 3) and out.dtype == I8


def test_keyword_only_like_upstream() -> None:
    with pytest.raises(TypeError):
        compat.LinearQuant(5, 127, False)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        (dict(in_features=0, out_features=3), ValueError, ["'in_features'", "0"]),
        (dict(in_features=2, out_features=3.5), TypeError, ["'out_features'", "float 3.5"]),
        (dict(in_features=True, out_features=3), TypeError, ["'in_features'", "True"]),
        (dict(in_features=2, out_features=-1), ValueError, ["'out_features'", "-1"]),
        (
            dict(in_features=2, out_features=3, output_dtype="int8"),
            TypeError,
            ["'output_dtype'", "'int8'"],
        ),
        (
            dict(in_features=2, out_features=3, output_dtype=torch.float32),
            ValueError,
            ["'output_dtype'", "torch.float32", "torch.int32"],
        ),
    ],
)
def test_constructor_errors(kwargs, exc, words) -> None:
    with pytest.raises(exc) as info:
        compat.LinearQuant(**kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("output_dtype", [None, torch.float16, torch.bfloat16, torch.int32])
def test_forward_matches_oracle(output_dtype: torch.dtype | None) -> None:
    m = _filled(compat.LinearQuant(24, 10, offset=output_dtype is None, output_dtype=output_dtype))
    x = torch.randint(-128, 128, (2, 3, 24), dtype=I8, generator=torch.Generator().manual_seed(9))
    y = m(x)
    name = {
        None: "int8",
        torch.float16: "float16",
        torch.bfloat16: "bfloat16",
        torch.int32: "int32",
    }
    exp = oracle.quant_matmul(
        x.numpy(),
        m.weight.numpy().T,
        m.scale.detach().numpy(),
        offset=None if m.offset is None else m.offset.detach().numpy(),
        bias=m.bias.detach().numpy(),
        bias_kind="int32",
        out=name[output_dtype],
    )
    np.testing.assert_array_equal(as_numpy(y), exp)


def test_forward_with_int64_scale_equals_float_scale() -> None:
    m = _filled(compat.LinearQuant(24, 10, offset=True))
    x = torch.randint(-128, 128, (5, 24), dtype=I8)
    y_float = m(x)
    m.scale.data = compat.trans_quant_param(m.scale.detach(), m.offset.detach())
    assert torch.equal(m(x), y_float)


def test_pertoken_after_assigning_m_sized_tensor() -> None:
    m = _filled(compat.LinearQuant(8, 4, pertoken_scale=True, output_dtype=torch.bfloat16))
    x = torch.randint(-128, 128, (3, 8), dtype=I8)
    m.pertoken_scale.data = torch.tensor([1.0, 0.5, 2.0])
    y = m(x)
    exp = oracle.quant_matmul(
        x.numpy(),
        m.weight.numpy().T,
        m.scale.detach().numpy(),
        pertoken=np.float32([1.0, 0.5, 2.0]),
        bias=m.bias.detach().numpy(),
        bias_kind="int32",
        out="bfloat16",
    )
    np.testing.assert_array_equal(as_numpy(y), exp)


def test_input_weight_dtype_check() -> None:
    m = compat.LinearQuant(4, 3)
    with pytest.raises(
        ValueError, match=r"input has dtype torch.int32 and weight has dtype torch.int8"
    ):
        m(torch.zeros(2, 4, dtype=I32))
    with pytest.raises(ValueError, match=r"torch.float32"):
        m(torch.zeros(2, 4))


def test_a4w4_module() -> None:
    # in_features is the packed k/8; the weight (n, k/8) int32 is assigned by the user
    m = compat.LinearQuant(2, 8, bias=False, output_dtype=torch.float16)
    rng = np.random.default_rng(0)
    a, b = rng.integers(-8, 8, (3, 16)), rng.integers(-8, 8, (8, 16))

    def pack(v: np.ndarray) -> torch.Tensor:
        u = (v.astype(np.int64) & 0xF).reshape(v.shape[0], -1, 8)
        p = sum(u[..., j] << (4 * j) for j in range(8))
        return torch.from_numpy(np.where(p >= 2**31, p - 2**32, p).astype(np.int32))

    m.weight.data = pack(b)
    m.scale.data = torch.full((8,), 0.25)
    y = m(pack(a))
    exp = oracle.quant_matmul(a, b.T, np.full(8, 0.25, np.float32), out="float16")
    np.testing.assert_array_equal(y.numpy(), exp)


def test_repr() -> None:
    r = repr(compat.LinearQuant(4, 3, offset=True, output_dtype=torch.float16))
    assert "in_features=4, out_features=3, bias=True, offset=True" in r and "torch.float16" in r
