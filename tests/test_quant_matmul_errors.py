"""Every illegal input to compat.quant_matmul raises a message naming the argument, the
value got and what is allowed; nothing is cast silently."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
import torch

import compat
from compat.ops.quant_matmul import _is_transposed_2d

I8, I32, I64 = torch.int8, torch.int32, torch.int64
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


def x1(*shape: int, dtype: torch.dtype = I8) -> torch.Tensor:
    return torch.zeros(shape or (2, 4), dtype=dtype)


def x2(*shape: int, dtype: torch.dtype = I8) -> torch.Tensor:
    return torch.zeros(shape or (4, 3), dtype=dtype)


S = torch.ones(3)
Q = compat.trans_quant_param(torch.ones(3))

CASES = [
    # (kwargs, exception, words that must appear)
    (
        dict(x1=x1(dtype=F16), x2=x2(), scale=S),
        TypeError,
        ["'x1'", "torch.float16", "torch.int8", "torch.int32"],
    ),
    (dict(x1=x1(), x2=x2(dtype=I32), scale=S), TypeError, ["'x2'", "torch.int32", "torch.int8"]),
    (dict(x1=[[1]], x2=x2(), scale=S), TypeError, ["'x1'", "torch.Tensor", "list"]),
    (dict(x1=x1(), x2=x2(), scale=S, bias=[1, 2, 3]), TypeError, ["'bias'", "list"]),
    (
        dict(x1=x1(), x2=x2(), scale=S, output_dtype="int8"),
        TypeError,
        ["'output_dtype'", "'int8'", "torch.float16"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=S, output_dtype=torch.float64),
        ValueError,
        ["'output_dtype'", "torch.float64", "torch.bfloat16"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=S, output_dtype=torch.uint8),
        ValueError,
        ["'output_dtype'", "torch.uint8"],
    ),
    # dtype table (docs/ops.md §2.5)
    (
        dict(x1=x1(), x2=x2(), scale=S.to(F16)),
        TypeError,
        ["'scale'", "torch.float16", "torch.int64, torch.float32"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=S.to(BF16)),
        TypeError,
        ["'scale'", "torch.bfloat16", "output_dtype=torch.int8"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=Q, output_dtype=BF16),
        TypeError,
        ["'scale'", "torch.int64", "torch.float32, torch.bfloat16"],
    ),
    (dict(x1=x1(), x2=x2(), scale=Q, output_dtype=I32), TypeError, ["'scale'", "torch.int64"]),
    (
        dict(x1=x1(), x2=x2(), scale=S, offset=S, output_dtype=F16),
        ValueError,
        ["'offset'", "must be None", "int8 output"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=S, offset=S.to(F16)),
        TypeError,
        ["'offset'", "torch.float16", "torch.float32"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=S, bias=S),
        TypeError,
        ["'bias'", "torch.float32", "torch.int32"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=S, bias=S.to(BF16), output_dtype=F16),
        TypeError,
        ["'bias'", "torch.bfloat16"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=S, bias=S.to(F16), output_dtype=BF16),
        TypeError,
        ["'bias'", "torch.float16"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=S, bias=S, output_dtype=I32),
        TypeError,
        ["'bias'", "torch.float32", "torch.int32"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=S, bias=torch.ones(3, dtype=I64)),
        TypeError,
        ["'bias'", "torch.int64"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=S, pertoken_scale=torch.ones(2)),
        ValueError,
        ["'pertoken_scale'", "torch.int8", "does not allow"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=S, pertoken_scale=torch.ones(2), output_dtype=I32),
        ValueError,
        ["'pertoken_scale'"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=S, pertoken_scale=torch.ones(2, dtype=F16), output_dtype=F16),
        TypeError,
        ["'pertoken_scale'", "torch.float16", "torch.float32"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=Q, pertoken_scale=torch.ones(2), output_dtype=F16),
        TypeError,
        ["'scale'", "torch.int64", "pertoken_scale"],
    ),
    # shapes (docs/ops.md §2.6)
    (dict(x1=torch.zeros(4, dtype=I8), x2=x2(), scale=S), ValueError, ["'x1'", "1 dims", "2 to 6"]),
    (
        dict(x1=torch.zeros(1, 1, 1, 1, 1, 2, 4, dtype=I8), x2=x2(), scale=S),
        ValueError,
        ["'x1'", "7 dims"],
    ),
    (dict(x1=x1(0, 4), x2=x2(), scale=S), ValueError, ["'x1'", "empty", "(0, 4)"]),
    (dict(x1=x1(), x2=x2(4, 0), scale=torch.ones(1)), ValueError, ["'x2'", "empty"]),
    (dict(x1=x1(2, 5), x2=x2(), scale=S), ValueError, ["inner dims", "k=5", "k=4"]),
    (dict(x1=x1(2, 2, 4), x2=x2(3, 4, 3), scale=S), ValueError, ["batch dims", "(2,)", "(3,)"]),
    (
        dict(x1=x1(), x2=x2(), scale=torch.ones(2)),
        ValueError,
        ["'scale'", "(2,)", "(1,) or (n,) = (3,)"],
    ),
    (dict(x1=x1(), x2=x2(), scale=torch.ones(1, 3)), ValueError, ["'scale'", "(1, 3)"]),
    (dict(x1=x1(), x2=x2(), scale=S, offset=torch.ones(2)), ValueError, ["'offset'", "(2,)"]),
    (
        dict(x1=x1(), x2=x2(), scale=S, pertoken_scale=torch.ones(3), output_dtype=BF16),
        ValueError,
        ["'pertoken_scale'", "(3,)", "(m,) = (2,)"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=S, bias=torch.ones(4, dtype=I32)),
        ValueError,
        ["'bias'", "(4,)", "(n,) = (3,)"],
    ),
    (
        dict(x1=x1(), x2=x2(), scale=S, bias=torch.ones(1, 3, dtype=I32)),
        ValueError,
        ["'bias'", "(1, 3)"],
    ),
    (
        dict(x1=x1(2, 2, 4), x2=x2(), scale=S, bias=torch.ones(3, 1, 3, dtype=I32)),
        ValueError,
        ["'bias'", "(3, 1, 3)", "(2, 1, 3)"],
    ),
    (
        dict(x1=x1(2, 2, 2, 4), x2=x2(), scale=S, bias=torch.ones(2, 1, 3, dtype=I32)),
        ValueError,
        ["'bias'", "(n,)"],
    ),
    # size limit as the NPU sees it
    (dict(x1=x1(1, 65536), x2=x2(65536, 3), scale=S), ValueError, ["'x1'", "65536", "65535"]),
    (
        dict(x1=x1(1, 4), x2=x2(4, 65536), scale=torch.ones(1)),
        ValueError,
        ["'x2'", "65536", "65535"],
    ),
    # values
    (
        dict(x1=x1(), x2=x2(), scale=S, offset=torch.tensor([0.0, float("nan"), 1.0])),
        ValueError,
        ["'offset'", "NaN"],
    ),
    # devices
    (
        dict(x1=x1(), x2=x2(), scale=torch.ones(3, device="meta")),
        ValueError,
        ["'scale'", "meta", "cpu"],
    ),
]


@pytest.mark.parametrize(("kwargs", "exc", "words"), CASES)
def test_error(kwargs, exc, words) -> None:
    with pytest.raises(exc) as info:
        compat.quant_matmul(**kwargs)
    message = str(info.value)
    assert message.startswith("quant_matmul: ")
    for word in words:
        assert word in message, (word, message)


def test_transposed_x2_limit_applies_to_k_only() -> None:
    # x2 = the (k, n) transposed view of a contiguous (n, k) weight: the NPU sees k as its
    # last dim, so n = 65536 is legal there (while a contiguous (k, 65536) x2 is not)
    w = torch.zeros(65536, 2, dtype=I8)
    out = compat.quant_matmul(torch.zeros(1, 2, dtype=I8), w.t(), torch.ones(1), output_dtype=I32)
    assert out.shape == (1, 65536)


def test_limit_counts_the_storage_of_a_transposed_x1() -> None:
    # x1 = the (m, k) transposed view of a contiguous (k, m) tensor: CANN swaps it back
    # first, so its last dim is m; k = 70000 is fine there, m = 70000 is not
    ok = compat.quant_matmul(
        torch.ones(70000, 2, dtype=I8).t(), torch.ones(70000, 3, dtype=I8), S, output_dtype=I32
    )
    assert ok.shape == (2, 3) and bool((ok == 70000).all())
    with pytest.raises(ValueError, match=r"'x1' as the NPU sees it is 70000.*transposed view"):
        compat.quant_matmul(torch.ones(4, 70000, dtype=I8).t(), x2(4, 3), S)


def test_a4w4_limit_counts_int4_elements() -> None:
    # x1 (m, k/8) int32 with k/8 = 8192 is k = 65536 int4 values: over the limit
    with pytest.raises(ValueError, match=r"'x1' as the NPU sees it is 65536.*8 per int32"):
        compat.quant_matmul(
            x1(1, 8192, dtype=I32), x2(65536, 1, dtype=I32), torch.ones(8), output_dtype=F16
        )
    # n = 8 * 8192 = 65536 through a non-transposed (k, n/8) x2
    with pytest.raises(ValueError, match="'x2' as the NPU sees it is 65536"):
        compat.quant_matmul(
            x1(1, 1, dtype=I32), x2(8, 8192, dtype=I32), torch.ones(1), output_dtype=F16
        )


def test_transpose_of_a_single_column_weight_follows_cann() -> None:
    # weight (n, 1) int32 (A4W4, k = 8): weight.t() has shape (1, n) and strides (1, 1),
    # contiguous for PyTorch but a transposed x2 for CANN (storage (n, k/8))
    n = 8
    w = torch.tensor([1, -1, 7, -8, 3, 0, 2, -5], dtype=I32).view(n, 1)  # int4 in bits 0-3
    x = torch.full((2, 1), 0x11111111, dtype=I32)  # eight int4 ones: k = 8
    out = compat.quant_matmul(x, w.t(), torch.ones(n), output_dtype=F16)
    assert out.shape == (2, n)

    # x's nibbles are all 1, so each output is the sum of the eight signed nibbles of w's
    # int32 (e.g. -1 = 0xFFFFFFFF holds eight -1s)
    nibble_sums = oracle.unpack_int4(w.view(-1).numpy()).reshape(n, 8).sum(axis=1)
    want = torch.from_numpy(nibble_sums.astype(np.float16)).expand(2, n)
    assert torch.equal(out, want)
    m = compat.LinearQuant(1, n, bias=False, output_dtype=F16)
    m.weight.data, m.scale.data = w.clone(), torch.ones(n)
    assert torch.equal(m(x), want)
    # a (1, 1) operand is never transposed
    assert not _is_transposed_2d(torch.ones(1, 1, dtype=I8).t())


def test_pertoken_required_for_a4w4_bf16() -> None:
    with pytest.raises(ValueError, match="requires 'pertoken_scale'"):
        compat.quant_matmul(
            x1(2, 1, dtype=I32), x2(8, 2, dtype=I32), torch.ones(16), output_dtype=BF16
        )


def test_a4w4_errors() -> None:
    with pytest.raises(ValueError, match="A4W4 needs a 2-D x2"):
        compat.quant_matmul(
            x1(2, 1, dtype=I32), x2(1, 8, 2, dtype=I32), torch.ones(16), output_dtype=F16
        )
    with pytest.raises(ValueError, match="inner dims"):
        compat.quant_matmul(
            x1(2, 2, dtype=I32), x2(8, 2, dtype=I32), torch.ones(16), output_dtype=F16
        )
    with pytest.raises(ValueError, match="does not support"):
        compat.quant_matmul(
            x1(2, 1, dtype=I32), x2(8, 2, dtype=I32), torch.ones(16), output_dtype=I8
        )


def test_inputs_are_not_modified_or_cast() -> None:
    a, b = torch.ones(2, 4, dtype=I8), torch.ones(4, 3, dtype=I8)
    s, bias = torch.full((3,), 0.3), torch.ones(3, dtype=I32)
    before = [t.clone() for t in (a, b, s, bias)]
    compat.quant_matmul(a, b, s, bias=bias, output_dtype=F16)
    for t, old in zip((a, b, s, bias), before, strict=True):
        assert t.dtype == old.dtype and torch.equal(t, old)
