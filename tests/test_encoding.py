"""trans_quant_param / decode_quant_param: docs/ops.md §1 worked examples, properties, errors."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import compat

# docs/ops.md §1.6, one row per line: scale, offset, round_mode, int64, decoded scale, decoded offset
WORKED = [
    (0.1, None, 0, 70369781006336, 0.0999755859375, 0),
    (0.1, None, 1, 70369781006336, 0.0999755859375, 0),
    (0.1, 3.5, 0, 70919536820224, 0.0999755859375, 4),
    (0.1, 2.5, 0, 70644658913280, 0.0999755859375, 2),
    (0.1, -1.0, 0, 140601086230528, 0.0999755859375, -1),
    (0.1, -300.0, 0, 105554153095168, 0.0999755859375, -256),
    (1.0, None, 0, 70369809530880, 1.0, 0),
    (-2.0, 255.6, 0, 105418898538496, -2.0, 255),
    (0.3, None, 0, 70369794424832, 0.2998046875, 0),
    (0.3, None, 1, 70369794433024, 0.300048828125, 0),
    (1e-40, None, 0, 70368744243200, None, 0),
    (1e-40, None, 1, 70368744177664, 0.0, 0),
]


@pytest.mark.parametrize(("scale", "offset", "rm", "q", "dec_scale", "dec_offset"), WORKED)
def test_worked_examples(scale, offset, rm, q, dec_scale, dec_offset) -> None:
    s = torch.tensor([scale], dtype=torch.float32)
    o = None if offset is None else torch.tensor([offset], dtype=torch.float32)
    got = compat.trans_quant_param(s, o, round_mode=rm)
    assert got.dtype == torch.int64
    assert got.tolist() == [q]
    ds, do = compat.decode_quant_param(got)
    assert ds.dtype == torch.float32 and do.dtype == torch.float32
    if dec_scale is None:  # the denormal row: 1e-40 truncated keeps its top bits
        expected = float(np.frombuffer(np.uint32(q & 0xFFFFE000).tobytes(), dtype=np.float32)[0])
        assert ds.item() == expected and 9.1e-41 < ds.item() < 9.2e-41
    else:
        assert ds.item() == dec_scale
    assert do.item() == dec_offset


def test_hex_layout_of_worked_example() -> None:
    got = compat.trans_quant_param(torch.tensor([-2.0]), torch.tensor([255.6])).item()
    assert got == 0x00005FE0C0000000
    assert got >> 46 == 1 and (got >> 37) & 0x1FF == 255 and got & 0x1FFF == 0


def test_round_mode_1_overflow_to_inf() -> None:
    flt_max = torch.tensor([torch.finfo(torch.float32).max])
    assert compat.trans_quant_param(flt_max, round_mode=1).item() == 0x40007F800000
    assert compat.trans_quant_param(flt_max, round_mode=0).item() == (0x7F7FFFFF & 0xFFFFE000) | (
        1 << 46
    )


def test_round_mode_none_means_zero() -> None:
    # op-plugin's schema is `int? round_mode=0` and its eager code uses value_or(0)
    s = torch.tensor([0.1, 3.0e-3, 1.0], dtype=torch.float32)
    o = torch.tensor([2.4, -7.5, 0.0], dtype=torch.float32)
    got = compat.trans_quant_param(s, o, None).tolist()
    bits = s.view(torch.int32).tolist()
    # independent: fp19 truncation of the float32 bits, offset rint half-even to 9 bits
    offsets = [2, -8, 0]
    want = [
        (b & 0xFFFFE000) | ((q & 0x1FF) << 37) | (1 << 46)
        for b, q in zip(bits, offsets, strict=True)
    ]
    assert got == want


def test_negative_denormal_flushes_to_negative_zero() -> None:
    q = compat.trans_quant_param(torch.tensor([-1e-40]), round_mode=1).item()
    assert q == (1 << 31) | (1 << 46)
    s, _ = compat.decode_quant_param(torch.tensor([q]))
    assert s.item() == 0.0 and str(s.item()) == "-0.0"


finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
any_offset = st.floats(min_value=-1000, max_value=1000, width=32) | st.sampled_from(
    [-256.5, -255.5, 254.5, 255.5, 0.5, 1.5, -0.5, 2.5, 1e9, -1e9]
)


@settings(max_examples=300, deadline=None)
@given(
    scales=st.lists(finite_f32, min_size=1, max_size=6),
    offset=any_offset,
    rm=st.sampled_from([0, 1]),
    per_tensor_offset=st.booleans(),
)
def test_encode_matches_oracle(scales, offset, rm, per_tensor_offset) -> None:
    s = np.array(scales, dtype=np.float32)
    o = np.full(1 if per_tensor_offset else len(s), offset, dtype=np.float32)
    got = compat.trans_quant_param(torch.from_numpy(s), torch.from_numpy(o), round_mode=rm)
    expected = oracle.encode(s, o, rm)
    np.testing.assert_array_equal(got.numpy(), expected)
    # every encoded value lies in [2**46, 2**47)
    assert ((got >= 2**46) & (got < 2**47)).all()


@settings(max_examples=300, deadline=None)
@given(scales=st.lists(finite_f32, min_size=1, max_size=6), offset=any_offset)
def test_decode_then_encode_is_idempotent(scales, offset) -> None:
    s = torch.tensor(scales, dtype=torch.float32)
    q = compat.trans_quant_param(s, torch.full_like(s, offset))
    ds, do = compat.decode_quant_param(q)
    np.testing.assert_array_equal(ds.numpy(), oracle.fp19(s.numpy()))
    assert torch.equal(compat.trans_quant_param(ds, do), q)


def test_decode_masks_junk_low_bits() -> None:
    q = compat.trans_quant_param(torch.tensor([0.1]), torch.tensor([-7.0])).item()
    s, o = compat.decode_quant_param(torch.tensor([q | 0x1FFF]))
    assert s.item() == 0.0999755859375 and o.item() == -7.0


def test_shapes() -> None:
    two_d = torch.rand(1, 5)
    assert compat.trans_quant_param(two_d).shape == (1, 5)
    assert compat.trans_quant_param(two_d, torch.rand(1, 5)).shape == (1, 5)
    assert compat.trans_quant_param(torch.rand(1), torch.rand(4)).shape == (4,)
    assert compat.trans_quant_param(torch.rand(4), torch.rand(1)).shape == (4,)
    q = compat.trans_quant_param(torch.tensor([0.5]), torch.tensor([1.0, -2.0, 3.0]))
    np.testing.assert_array_equal(
        q.numpy(), oracle.encode(np.float32([0.5]), np.float32([1, -2, 3]))
    )


def test_meta_device() -> None:
    q = compat.trans_quant_param(torch.empty(3, device="meta"), torch.empty(3, device="meta"))
    assert q.device.type == "meta" and q.dtype == torch.int64 and q.shape == (3,)


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"scale": [0.1]}, TypeError, ["'scale'", "torch.Tensor", "list"]),
        (
            {"scale": torch.ones(2, dtype=torch.float16)},
            TypeError,
            ["'scale'", "torch.float16", "torch.float32"],
        ),
        ({"scale": torch.ones(2, 2)}, ValueError, ["'scale'", "(2, 2)", "(1, n)"]),
        ({"scale": torch.ones(1, 2, 3)}, ValueError, ["'scale'", "(1, 2, 3)"]),
        ({"scale": torch.ones(0)}, ValueError, ["'scale'", "empty"]),
        (
            {"scale": torch.ones(3), "offset": torch.ones(2)},
            ValueError,
            ["'offset'", "length 2", "3"],
        ),
        (
            {"scale": torch.ones(3), "offset": torch.ones(3, dtype=torch.float64)},
            TypeError,
            ["'offset'", "torch.float64"],
        ),
        (
            {"scale": torch.ones(1, 3), "offset": torch.ones(3)},
            ValueError,
            ["'offset'", "(3,)", "(1, 3)"],
        ),
        ({"scale": torch.ones(3), "offset": torch.ones(1, 3)}, ValueError, ["'offset'", "1-D"]),
        (
            {"scale": torch.ones(3), "offset": torch.tensor([1.0, float("nan"), 2.0])},
            ValueError,
            ["'offset'", "NaN"],
        ),
        ({"scale": torch.ones(3), "round_mode": 2}, ValueError, ["'round_mode'", "2", "0, 1"]),
        ({"scale": torch.ones(3), "round_mode": True}, ValueError, ["'round_mode'", "True"]),
    ],
)
def test_trans_quant_param_errors(kwargs, exc, words) -> None:
    with pytest.raises(exc) as info:
        compat.trans_quant_param(**kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (70369781006336 & ~(1 << 46), ["flag bit 46"]),
        (70369781006336 | (1 << 50), ["bits 47-63"]),
        (-70369781006336, ["bits 47-63"]),
        (70369781006336 | (1 << 33), ["bits 32-36"]),
        (123, ["flag bit 46"]),
    ],
)
def test_decode_rejects_non_params(value, words) -> None:
    good = compat.trans_quant_param(torch.tensor([1.0])).item()
    with pytest.raises(ValueError) as info:
        compat.decode_quant_param(torch.tensor([good, value]))
    msg = str(info.value)
    assert "'param'" in msg and "index [1]" in msg and str(value) in msg
    for word in words:
        assert word in msg


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_encode_and_decode_under_fullgraph_compile() -> None:
    def f(s: torch.Tensor, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return compat.decode_quant_param(compat.trans_quant_param(s, o, round_mode=1))

    s, o = torch.tensor([0.3, -1e-40, 2.0]), torch.tensor([2.5, -300.0, 7.0])
    torch._dynamo.reset()
    got_s, got_o = torch.compile(f, fullgraph=True)(s, o)
    exp_s, exp_o = oracle.decode(oracle.encode(s.numpy(), o.numpy(), 1))
    np.testing.assert_array_equal(got_s.numpy(), exp_s)
    np.testing.assert_array_equal(got_o.numpy(), exp_o.astype(np.float32))


def test_decode_requires_int64() -> None:
    with pytest.raises(TypeError, match=r"'param' has dtype torch.int32; allowed: torch.int64"):
        compat.decode_quant_param(torch.ones(2, dtype=torch.int32))
