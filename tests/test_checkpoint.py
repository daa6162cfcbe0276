"""Checkpoint loading into compat's modules, upgrade_state_dict/upgrade_report and
convert_model: dtype/shape adoption, exact errors, no silent casts, nothing lost."""

from __future__ import annotations

import json
import struct
from collections import OrderedDict
from typing import Any

import numpy as np
import oracle
import pytest
import torch
from conftest import run_python
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import compat

I8, I32, I64 = torch.int8, torch.int32, torch.int64
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
N, K = 8, 16


def encode_np(scale: np.ndarray, offset: np.ndarray | None = None) -> torch.Tensor:
    """Independent docs/ops.md §1.4 encoding (numpy), so tests do not trust compat's encoder."""
    bits = np.asarray(scale, dtype=np.float32).view(np.uint32).astype(np.uint64)
    q = (bits & np.uint64(0xFFFFE000)) | np.uint64(1 << 46)
    if offset is not None:
        o = np.clip(np.rint(np.asarray(offset, dtype=np.float64)), -256, 255).astype(np.int64)
        q |= (o.astype(np.uint64) & np.uint64(0x1FF)) << np.uint64(37)
    return torch.from_numpy(q.astype(np.int64))


def fp19(values: torch.Tensor) -> torch.Tensor:
    out = [
        struct.unpack(
            "<f", struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0] & 0xFFFFE000)
        )[0]
        for v in values.tolist()
    ]
    return torch.tensor(out, dtype=F32)


def model(**kwargs: Any) -> nn.Module:
    """A model with the quant linear nested two levels deep, at ``body.0.fc``."""
    body = nn.ModuleList([nn.Module()])
    body[0].fc = compat.LinearQuant(K, N, **kwargs)
    root = nn.Module()
    root.body = body
    root.norm = nn.LayerNorm(4)
    return root


def fc(m: nn.Module) -> compat.LinearQuant:
    layer = m.get_submodule("body.0.fc")
    assert isinstance(layer, compat.LinearQuant)
    return layer


def checkpoint(m: nn.Module, **tensors: torch.Tensor) -> dict[str, torch.Tensor]:
    sd = {k: v for k, v in m.state_dict().items() if not k.startswith("body.0.fc.")}
    sd.update({f"body.0.fc.{name}": t for name, t in tensors.items()})
    return sd


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def weight(seed: int = 0) -> torch.Tensor:
    return torch.randint(-128, 128, (N, K), dtype=I8, generator=gen(seed))


def scale(n: int = N, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=gen(seed)) * 0.01 + 0.001


# (module kwargs, checkpoint tensors) that are legal for the module
LEGAL_CASES: list[tuple[str, dict[str, Any], dict[str, torch.Tensor]]] = [
    (
        "int8 fp32 (n,)",
        dict(offset=True),
        dict(
            weight=weight(), scale=scale(), offset=torch.randn(N), bias=torch.arange(N, dtype=I32)
        ),
    ),
    (
        "int8 fp32 (1,) F3",
        dict(offset=True),
        dict(
            weight=weight(),
            scale=scale(1),
            offset=torch.tensor([3.0]),
            bias=torch.arange(N, dtype=I32),
        ),
    ),
    (
        "int8 int64 F2",
        dict(offset=True),
        dict(
            weight=weight(),
            scale=encode_np(scale().numpy(), np.arange(N) - 4.0),
            offset=torch.arange(N) - 4.0,
            bias=torch.arange(N, dtype=I32),
        ),
    ),
    ("int8 int64 (1,)", dict(bias=False), dict(weight=weight(), scale=encode_np(scale(1).numpy()))),
    (
        "fp16 int64",
        dict(output_dtype=F16),
        dict(weight=weight(), scale=encode_np(scale().numpy()), bias=torch.arange(N, dtype=I32)),
    ),
    (
        "bf16 bf16-scale bf16-bias",
        dict(output_dtype=BF16),
        dict(weight=weight(), scale=scale().to(BF16), bias=torch.randn(N).to(BF16)),
    ),
    (
        "bf16 fp32 fp32-bias",
        dict(output_dtype=BF16),
        dict(weight=weight(), scale=scale(), bias=torch.randn(N)),
    ),
    (
        "int32 out bf16 scale",
        dict(output_dtype=I32),
        dict(weight=weight(), scale=scale().to(BF16), bias=torch.arange(N, dtype=I32)),
    ),
    (
        "fp16 pertoken fp16 bias",
        dict(output_dtype=F16, pertoken_scale=True),
        dict(
            weight=weight(),
            scale=scale(),
            pertoken_scale=torch.rand(3) + 0.5,
            bias=torch.randn(N).to(F16),
        ),
    ),
    (
        "A4W4 fp16",
        dict(output_dtype=F16),
        dict(
            weight=torch.randint(-(2**31), 2**31 - 1, (N, K), dtype=I32, generator=gen(5)),
            scale=encode_np(scale().numpy()),
            bias=torch.arange(N, dtype=I32),
        ),
    ),
    (
        "A4W4 bf16 pertoken",
        dict(output_dtype=BF16, pertoken_scale=True),
        dict(
            weight=torch.randint(-(2**31), 2**31 - 1, (N, K), dtype=I32, generator=gen(6)),
            scale=scale(),
            pertoken_scale=torch.rand(3) + 0.5,
            bias=torch.randn(N).to(BF16),
        ),
    ),
]


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    view = {1: I8, 2: torch.int16, 4: I32, 8: I64}[a.element_size()]
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(view), b.view(view))


def _oracle_forward(
    x: torch.Tensor, tensors: dict[str, torch.Tensor], output_dtype: torch.dtype | None
) -> torch.Tensor:
    """The layer's output by tests/oracle.py (numpy float64/int64), as a tensor."""
    w = tensors["weight"]
    values = oracle.unpack_int4(w.numpy()) if w.dtype == I32 else w.numpy()
    xs = oracle.unpack_int4(x.numpy()) if x.dtype == I32 else x.numpy()
    scale_t = tensors["scale"]
    kind = {torch.int64: "int64", BF16: "bfloat16"}.get(scale_t.dtype, "float32")
    scale_np = scale_t.numpy() if scale_t.dtype == torch.int64 else scale_t.float().numpy()
    bias = tensors.get("bias")
    out = str(output_dtype or torch.int8).removeprefix("torch.")
    got = oracle.quant_matmul(
        xs,
        values.T,
        scale_np,
        offset=None if "offset" not in tensors else tensors["offset"].numpy(),
        pertoken=None if "pertoken_scale" not in tensors else tensors["pertoken_scale"].numpy(),
        bias=None if bias is None else bias.float().numpy() if bias.dtype != I32 else bias.numpy(),
        bias_kind=None if bias is None else "int32" if bias.dtype == I32 else "float",
        out=out,
        scale_kind=kind,
    )
    if out == "bfloat16":
        return torch.from_numpy(got.view(np.int16)).view(BF16)
    return torch.from_numpy(np.ascontiguousarray(got))


@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize(
    ("kwargs", "tensors"), [c[1:] for c in LEGAL_CASES], ids=[c[0] for c in LEGAL_CASES]
)
def test_legal_checkpoints_are_adopted_exactly(
    kwargs: dict[str, Any], tensors: dict[str, torch.Tensor], strict: bool, assign: bool
) -> None:
    m = model(**kwargs)
    before = {name: p for name, p in fc(m).named_parameters()}
    result = m.load_state_dict(checkpoint(m, **tensors), strict=strict, assign=assign)
    assert not result.missing_keys and not result.unexpected_keys
    layer = fc(m)
    for name, want in tensors.items():
        got = getattr(layer, name)
        assert isinstance(got, nn.Parameter) and not got.requires_grad
        assert _bits_equal(got.data, want), (name, got.dtype, want.dtype)  # dtype, shape, bits
        if assign:
            assert got.data_ptr() == want.data_ptr()  # assign: the checkpoint's own tensor
        else:
            assert got is before[name]  # same Parameter object: optimizers and ties keep working
            assert got.data_ptr() != want.data_ptr()  # ... holding a copy
    rows = tensors["pertoken_scale"].shape[0] if "pertoken_scale" in tensors else 3
    x = torch.randint(-128, 128, (rows, K), dtype=layer.weight.dtype, generator=gen(9))
    assert _bits_equal(layer(x), _oracle_forward(x, tensors, layer.output_dtype))


def test_the_upstream_failure_modes_do_not_happen() -> None:
    """Each silent corruption of plain load_state_dict (docs/ops.md §3.4), on compat's module."""
    m = model(output_dtype=BF16)
    q = encode_np(scale().numpy())
    bias = torch.tensor([1.703125, -2.703125, 3.5, 0, 0, 0, 0, 0]).to(BF16)
    m.load_state_dict(checkpoint(m, weight=weight(), scale=scale(1), bias=bias))
    assert fc(m).scale.shape == (1,)  # no "size mismatch for scale"
    assert fc(m).bias.dtype == BF16 and fc(m).bias[0].item() == 1.703125  # not truncated to 1
    m2 = model()
    m2.load_state_dict(checkpoint(m2, weight=weight(), scale=q, bias=torch.zeros(N, dtype=I32)))
    assert fc(m2).scale.dtype == I64 and torch.equal(fc(m2).scale, q)  # not 7.0e13 as a float


def test_f2_is_decoded_exactly_for_float_scale_modules() -> None:
    s = scale()
    for kwargs in (
        dict(output_dtype=BF16),
        dict(output_dtype=I32),
        dict(output_dtype=F16, pertoken_scale=True),
    ):
        m = model(**kwargs)
        m.load_state_dict(
            checkpoint(
                m, weight=weight(), scale=encode_np(s.numpy()), bias=torch.zeros(N, dtype=I32)
            )
        )
        assert fc(m).scale.dtype == F32
        assert torch.equal(fc(m).scale, fp19(s)), kwargs  # exact: the fp19 value the bits hold


# --------------------------------------------------------------------------- errors
ERROR_CASES: list[tuple[str, dict[str, Any], dict[str, torch.Tensor], list[str]]] = [
    (
        "weight int16",
        {},
        dict(weight=weight().to(torch.int16)),
        ["'body.0.fc.weight'", "torch.int16", "(8, 16)", "allowed: torch.int8, torch.int32"],
    ),
    (
        "weight transposed",
        {},
        dict(weight=weight().t().contiguous()),
        ["'body.0.fc.weight'", "shape (16, 8)", "allowed: (8, 16) = (out_features, in_features)"],
    ),
    (
        "float weight non-integer",
        {},
        dict(
            weight=weight()
            .float()
            .index_put_((torch.tensor([2]), torch.tensor([3])), torch.tensor(0.5))
        ),
        ["'body.0.fc.weight'", "0.5 at index [2, 3]", "not an integer in [-128, 127]"],
    ),
    (
        "float weight out of range",
        {},
        dict(weight=weight().float().index_fill_(0, torch.tensor([1]), 200.0)),
        ["'body.0.fc.weight'", "200.0 at index [1, 0]"],
    ),
    (
        "float weight NaN",
        {},
        dict(weight=weight().float().index_fill_(0, torch.tensor([0]), float("nan"))),
        ["'body.0.fc.weight'", "nan at index [0, 0]"],
    ),
    (
        "scale float16",
        {},
        dict(scale=scale().half()),
        [
            "'body.0.fc.scale'",
            "torch.float16",
            "allowed: torch.float32, torch.int64",
            "model.half()",
        ],
    ),
    (
        "scale bf16 for int8 output",
        {},
        dict(scale=scale().to(BF16)),
        [
            "'body.0.fc.scale'",
            "torch.bfloat16",
            "for output_dtype=torch.int8",
            "allowed: torch.float32, torch.int64",
        ],
    ),
    (
        "scale length",
        {},
        dict(scale=scale(3)),
        ["'body.0.fc.scale'", "shape (3,)", "allowed: (1,) or (n,) = (8,)"],
    ),
    ("scale 2-D", {}, dict(scale=scale().reshape(1, N)), ["'body.0.fc.scale'", "shape (1, 8)"]),
    (
        "scale NaN",
        {},
        dict(scale=scale().index_fill_(0, torch.tensor([4]), float("nan"))),
        ["'body.0.fc.scale'", "NaN at index 4"],
    ),
    (
        "scale destroyed int64",
        {},
        dict(scale=encode_np(scale().numpy()).float()),
        ["'body.0.fc.scale'", "[2**46, 2**47]", "cannot be recovered", "Re-export"],
    ),
    (
        "scale int64 not encoded",
        {},
        dict(scale=torch.arange(N, dtype=I64)),
        ["'body.0.fc.scale'", "not an npu_trans_quant_param result", "flag bit 46"],
    ),
    (
        "int64 offset into bf16",
        dict(output_dtype=BF16),
        dict(scale=encode_np(scale().numpy(), np.full(N, 7.0))),
        ["'body.0.fc.scale'", "offset 7", "output_dtype=torch.bfloat16"],
    ),
    # an int32 (A4W4) weight: quant_matmul takes it for float16 output, or bfloat16 output
    # with pertoken_scale (docs/ops.md §2.5, §2.7), never for int8/int32 output
    (
        "A4W4 weight for int8 output",
        {},
        dict(weight=weight().to(I32)),
        [
            "'body.0.fc.weight'",
            "torch.int32",
            "for output_dtype=torch.int8",
            "torch.float16 (with or without pertoken_scale)",
            "torch.bfloat16 (with pertoken_scale)",
            "allowed here: torch.int8",
        ],
    ),
    (
        "A4W4 weight for int32 output",
        dict(output_dtype=I32),
        dict(weight=weight().to(I32)),
        ["'body.0.fc.weight'", "torch.int32", "for output_dtype=torch.int32", "A4W4"],
    ),
    (
        "A4W4 weight for bf16 output without pertoken",
        dict(output_dtype=BF16),
        dict(weight=weight().to(I32)),
        ["'body.0.fc.weight'", "torch.int32", "for output_dtype=torch.bfloat16", "A4W4"],
    ),
    # an offset exists only for int8 output (docs/ops.md §2.5; CANN rejects it for float16 output)
    (
        "offset for fp16 output",
        dict(offset=True, output_dtype=F16),
        dict(offset=torch.zeros(N)),
        [
            "'body.0.fc.offset'",
            "torch.float32 (8,)",
            "for output_dtype=torch.float16",
            "only for output_dtype torch.int8",
            "allowed here: no offset",
        ],
    ),
    (
        "offset for bf16 output",
        dict(offset=True, output_dtype=BF16),
        dict(offset=torch.zeros(1)),
        ["'body.0.fc.offset'", "for output_dtype=torch.bfloat16", "allowed here: no offset"],
    ),
    (
        "offset int32",
        dict(offset=True),
        dict(offset=torch.zeros(N, dtype=I32)),
        ["'body.0.fc.offset'", "torch.int32", "allowed: torch.float32"],
    ),
    (
        "offset NaN",
        dict(offset=True),
        dict(offset=torch.full((N,), float("nan"))),
        ["'body.0.fc.offset'", "NaN"],
    ),
    (
        "bias int64",
        {},
        dict(bias=torch.zeros(N, dtype=I64)),
        ["'body.0.fc.bias'", "torch.int64", "allowed: torch.int32"],
    ),
    (
        "bias float for int8",
        {},
        dict(bias=torch.zeros(N)),
        ["'body.0.fc.bias'", "torch.float32", "for output_dtype=torch.int8"],
    ),
    (
        "bias shape",
        {},
        dict(bias=torch.zeros(1, dtype=I32)),
        ["'body.0.fc.bias'", "shape (1,)", "allowed: (n,) = (8,)"],
    ),
    (
        "pertoken float16",
        dict(pertoken_scale=True, output_dtype=F16),
        dict(pertoken_scale=torch.ones(N).half()),
        ["'body.0.fc.pertoken_scale'", "torch.float16", "allowed: torch.float32"],
    ),
]


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize(
    ("kwargs", "bad", "words"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_illegal_entries_raise_and_leave_the_module_untouched(
    kwargs: dict[str, Any], bad: dict[str, torch.Tensor], words: list[str], strict: bool
) -> None:
    m = model(**kwargs)
    good = dict(weight=weight(), scale=scale(), bias=torch.arange(N, dtype=I32))
    if kwargs.get("offset"):
        good["offset"] = torch.zeros(N)
    if kwargs.get("pertoken_scale"):
        good["pertoken_scale"] = torch.ones(N)
    before = {k: (v, v.detach().clone()) for k, v in m.state_dict(keep_vars=True).items()}
    with pytest.raises(compat.CheckpointError) as err:
        m.load_state_dict(checkpoint(m, **{**good, **bad}), strict=strict)
    message = str(err.value)
    assert all(w in message for w in words), message
    for key, (param, copy) in before.items():  # nothing lost: same objects, same bits
        now = m.state_dict(keep_vars=True)[key]
        assert now is param and _bits_equal(now.data, copy)
    # upgrade_state_dict refuses the same input, naming the same key
    if "pertoken" not in message:
        with pytest.raises(compat.CheckpointError, match=r"body\.0\.fc"):
            compat.upgrade_state_dict(
                checkpoint(m, **{**good, **bad}),
                output_dtypes={"body.0.fc": kwargs.get("output_dtype")},
            )


@pytest.mark.parametrize("assign", [False, True])
def test_a_failure_inside_pytorchs_loader_loses_nothing(assign: bool) -> None:
    m = model()
    layer = fc(m)
    with torch.no_grad():
        layer.scale.copy_(scale())
        layer.weight.copy_(weight(7))
    before = {name: (p, p.data.clone()) for name, p in layer.named_parameters()}

    def boom(*args: Any) -> None:
        raise RuntimeError("pre-hook failed")

    layer.register_load_state_dict_pre_hook(boom)
    sd = checkpoint(
        m, weight=weight(), scale=encode_np(scale(1).numpy()), bias=torch.zeros(N, dtype=I32)
    )
    with pytest.raises(RuntimeError, match="pre-hook failed"):
        m.load_state_dict(sd, assign=assign)
    for name, (param, data) in before.items():
        assert getattr(layer, name) is param and _bits_equal(param.data, data), name


def test_every_problem_is_listed_at_once() -> None:
    m = model(offset=True)
    bad = checkpoint(
        m,
        weight=weight().to(torch.int16),
        scale=scale().half(),
        offset=torch.zeros(N, dtype=I32),
        bias=torch.zeros(3, dtype=I32),
    )
    with pytest.raises(compat.CheckpointError) as err:
        m.load_state_dict(bad)
    assert len(err.value.problems) == 4
    assert str(err.value).startswith("4 problems:")
    assert isinstance(err.value, RuntimeError)  # load_state_dict's own error class


# --------------------------------------------------------------------------- pertoken
def test_pertoken_module_and_checkpoint_without_it() -> None:
    m = model(pertoken_scale=True, output_dtype=F16)
    mine = fc(m).pertoken_scale
    sd = checkpoint(m, weight=weight(), scale=scale(), bias=torch.zeros(N, dtype=I32))
    assert "body.0.fc.pertoken_scale" not in sd
    result = m.load_state_dict(sd, strict=True)
    assert result.missing_keys == []  # per-call data, not a missing weight
    assert fc(m).pertoken_scale is mine  # the module keeps its own tensor


def test_checkpoint_with_pertoken_into_module_without_it() -> None:
    donor = model(pertoken_scale=True, output_dtype=F16)
    sd = checkpoint(
        donor,
        weight=weight(),
        scale=scale(),
        pertoken_scale=torch.ones(N),
        bias=torch.zeros(N, dtype=I32),
    )
    m = model(output_dtype=F16)
    with pytest.raises(RuntimeError, match=r'Unexpected key.*"body\.0\.fc\.pertoken_scale"'):
        m.load_state_dict(sd, strict=True)
    result = m.load_state_dict(sd, strict=False)
    assert result.unexpected_keys == ["body.0.fc.pertoken_scale"]
    assert torch.equal(fc(m).weight, weight())


def test_missing_and_unexpected_keys_follow_pytorch() -> None:
    m = model(offset=True)
    sd = checkpoint(m, weight=weight(), scale=scale(), bias=torch.zeros(N, dtype=I32))  # no offset
    sd["body.0.fc.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"Missing key.*body\.0\.fc\.offset"):
        m.load_state_dict(sd)
    result = m.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["body.0.fc.offset"] and result.unexpected_keys == [
        "body.0.fc.extra"
    ]


# --------------------------------------------------------------------------- cache, devices, version
@pytest.mark.parametrize("assign", [False, True])
def test_load_after_forward_invalidates_the_scale_cache(assign: bool) -> None:
    x = torch.randint(-128, 128, (5, K), dtype=I8, generator=gen(3))
    m = model(offset=True)
    first = dict(
        weight=weight(), scale=scale(seed=1), offset=torch.zeros(N), bias=torch.zeros(N, dtype=I32)
    )
    m.load_state_dict(checkpoint(m, **first))
    y1 = fc(m)(x)
    for second in (
        dict(first, scale=scale(seed=2), offset=torch.full((N,), 3.0)),  # same dtypes and shapes
        dict(first, scale=encode_np(scale(seed=4).numpy(), np.full(N, -2.0))),  # float -> int64
        dict(first, scale=scale(1, seed=5), offset=torch.tensor([1.0])),  # (n,) -> (1,)
    ):
        m.load_state_dict(checkpoint(m, **second), assign=assign)
        fresh = model(offset=True)
        fresh.load_state_dict(checkpoint(fresh, **second))
        assert torch.equal(fc(m)(x), fc(fresh)(x))
    assert not torch.equal(y1, fc(m)(x))


@pytest.mark.parametrize("assign", [False, True])
def test_swap_tensors_mode(assign: bool) -> None:
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        m = model(output_dtype=BF16)
        q = encode_np(scale().numpy())
        m.load_state_dict(
            checkpoint(m, weight=weight(), scale=q, bias=torch.randn(N).to(BF16)), assign=assign
        )
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)
    assert fc(m).scale.dtype == F32 and torch.equal(fc(m).scale, fp19(scale()))
    assert fc(m).bias.dtype == BF16 and fc(m).weight.dtype == I8


def test_stale_f2_offset_that_disagrees_is_noted() -> None:
    sd = {
        "fc.weight": weight(),
        "fc.scale": encode_np(scale().numpy(), np.full(N, 5.0)),
        "fc.offset": torch.full((N,), 5.0).index_fill_(0, torch.tensor([6]), -9.0),
    }
    (group,) = compat.upgrade_report(sd).groups
    assert len(group.notes) == 1
    assert "'fc.offset' (rounded: -9 at index 6) disagrees" in group.notes[0]
    assert "folded into the int64 scale (5)" in group.notes[0]
    sd["fc.offset"] = torch.full((N,), 5.2)  # rounds to the folded 5: consistent
    assert compat.upgrade_report(sd).groups[0].notes == ()


def test_meta_module_with_assign_takes_the_checkpoint_tensors() -> None:
    with torch.device("meta"):
        m = model(offset=True)
    tensors = dict(
        weight=weight(),
        scale=encode_np(scale().numpy()),
        offset=torch.zeros(1),
        bias=torch.zeros(N, dtype=I32),
    )
    sd = {k: v for k, v in checkpoint(model(offset=True), **tensors).items()}
    m.load_state_dict(sd, assign=True)
    assert (
        fc(m).weight.device.type == "cpu"
        and fc(m).scale.dtype == I64
        and fc(m).offset.shape == (1,)
    )


def test_state_dict_records_version_2_and_old_metadata_is_not_trusted() -> None:
    m = model()
    sd = m.state_dict()
    assert sd._metadata["body.0.fc"]["version"] == 2  # type: ignore[attr-defined]
    legacy = checkpoint(m, weight=weight().float(), scale=scale(), bias=torch.zeros(N, dtype=I32))
    legacy = OrderedDict(legacy)
    legacy._metadata = OrderedDict({"body.0.fc": {"version": 2}})  # type: ignore[attr-defined]  # stale claim
    m.load_state_dict(legacy)  # detected from the tensors anyway
    assert fc(m).weight.dtype == I8


# --------------------------------------------------------------------------- upgrade_state_dict
def legacy_model_sd() -> OrderedDict[str, torch.Tensor]:
    """Upstream-style whole-model state_dict: F4 weights, F2 scales, F3, a float layer."""
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["embed.weight"] = torch.randn(10, 4)
    sd["layers.0.q.weight"] = weight(1).float()
    sd["layers.0.q.scale"] = encode_np(scale().numpy(), np.arange(N, dtype=np.float64))
    sd["layers.0.q.offset"] = torch.arange(N, dtype=F32)
    sd["layers.0.q.bias"] = torch.zeros(N, dtype=I32)
    sd["layers.0.mlp.weight"] = weight(2)
    sd["layers.0.mlp.scale"] = encode_np(scale(1).numpy())
    sd["layers.1.norm.weight"] = torch.ones(4)
    sd["layers.1.norm.bias"] = torch.zeros(4)
    sd["head.weight"] = torch.randn(3, 4)  # a float layer using the same names
    sd["head.scale"] = torch.ones(3)
    sd._metadata = OrderedDict({"": {"version": 1}, "layers.0.q": {"version": 1}})  # type: ignore[attr-defined]
    return sd


def test_upgrade_state_dict_whole_model() -> None:
    sd = legacy_model_sd()
    snapshot = {k: (v, v.clone()) for k, v in sd.items()}
    meta = json.dumps(sd._metadata)  # type: ignore[attr-defined]
    out = compat.upgrade_state_dict(sd, output_dtypes={"layers.0.mlp": BF16})
    # the input is not mutated
    assert list(sd) == list(snapshot) and json.dumps(sd._metadata) == meta  # type: ignore[attr-defined]
    assert all(sd[k] is t and _bits_equal(t, c) for k, (t, c) in snapshot.items())
    assert list(out) == list(sd)  # same keys, same order
    assert out["layers.0.q.weight"].dtype == I8 and torch.equal(
        out["layers.0.q.weight"].float(), sd["layers.0.q.weight"]
    )
    assert out["layers.0.q.scale"] is sd["layers.0.q.scale"]  # int64 kept (output unknown: legal)
    assert out["layers.0.mlp.scale"].dtype == F32 and torch.equal(
        out["layers.0.mlp.scale"], fp19(scale(1))
    )
    for key in ("embed.weight", "layers.1.norm.weight", "head.weight", "head.scale"):
        assert out[key] is sd[key]  # untouched and shared, not copied
    assert out._metadata["layers.0.q"]["version"] == 2  # type: ignore[attr-defined]
    assert out._metadata["layers.0.mlp"]["version"] == 2  # type: ignore[attr-defined]
    assert out._metadata[""]["version"] == 1  # type: ignore[attr-defined]
    # idempotent
    again = compat.upgrade_state_dict(out, output_dtypes={"layers.0.mlp": BF16})
    assert all(again[k] is out[k] for k in out)
    assert not compat.upgrade_report(out, output_dtypes={"layers.0.mlp": BF16}).changed


def test_upgrade_report_lists_every_key_and_why() -> None:
    report = compat.upgrade_report(legacy_model_sd())
    assert [g.module for g in report.groups] == ["layers.0.q", "layers.0.mlp"]
    q = {k.name: k for k in report.groups[0].keys}
    assert q["weight"].action == "restored" and "F4" in q["weight"].reason
    assert q["scale"].action == "unchanged" and "torchair" in q["scale"].reason
    assert report.groups[0].formats == ("F2", "F4")
    assert [s[0] for s in report.skipped] == ["head"] and "output_dtypes" in report.skipped[0][1]
    assert report.other_keys == 5  # embed, norm x2, head x2
    text = str(report)
    assert "layers.0.q [F2+F4]" in text and "torch.float32 (8, 16) -> torch.int8 (8, 16)" in text
    json.dumps(report.to_dict())  # serialisable


def test_ambiguous_float_group_is_upgraded_only_when_declared() -> None:
    sd = {"fc.weight": weight().float(), "fc.scale": scale()}
    assert not compat.upgrade_report(sd).changed
    out = compat.upgrade_state_dict(sd, output_dtypes={"fc": None})
    assert out["fc.weight"].dtype == I8
    assert compat.upgrade_state_dict(sd, output_dtypes=F16)["fc.weight"].dtype == F32  # not named


def test_output_dtypes_argument_errors() -> None:
    sd = legacy_model_sd()
    with pytest.raises(
        ValueError,
        match=r"'layers\.9\.q'.*weight and scale keys: 'head', 'layers\.0\.mlp', 'layers\.0\.q'",
    ):
        compat.upgrade_state_dict(sd, output_dtypes={"layers.9.q": F16})
    with pytest.raises(
        ValueError, match=r"allowed: torch\.int8, torch\.float16, torch\.bfloat16, torch\.int32"
    ):
        compat.upgrade_state_dict(sd, output_dtypes=F32)
    with pytest.raises(TypeError):
        compat.upgrade_state_dict(sd, output_dtypes="bf16")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mapping"):
        compat.upgrade_state_dict([1, 2])  # type: ignore[arg-type]


def test_upgraded_whole_model_loads_into_compat_modules() -> None:
    root = nn.Module()
    root.embed = nn.Embedding(10, 4)
    root.layers = nn.ModuleList([nn.Module(), nn.Module()])
    root.layers[0].q = compat.LinearQuant(K, N, offset=True)
    root.layers[0].mlp = compat.LinearQuant(K, N, bias=False, output_dtype=BF16)
    root.layers[1].norm = nn.LayerNorm(4)
    root.head = nn.Module()
    root.head.weight = nn.Parameter(torch.empty(3, 4))
    root.head.scale = nn.Parameter(torch.empty(3))
    sd = legacy_model_sd()
    # the module knows its output dtype, so loading the raw legacy dict directly also works
    root.load_state_dict(sd)
    assert root.layers[0].mlp.scale.dtype == F32 and root.layers[0].q.scale.dtype == I64
    assert root.head.weight.dtype == F32


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(min_value=1e-30, max_value=1e30, allow_subnormal=False), min_size=1, max_size=16
    )
)
def test_f2_decoding_is_exact_for_any_scale(values: list[float]) -> None:
    s = torch.tensor(values, dtype=F32)
    q = encode_np(s.numpy())
    out = compat.upgrade_state_dict(
        {"w.weight": torch.zeros(len(values), 2, dtype=I8), "w.scale": q}, output_dtypes=I32
    )
    assert torch.equal(out["w.scale"], fp19(s))
    assert torch.equal(encode_np(out["w.scale"].numpy()), q)  # re-encoding gives the param back


# --------------------------------------------------------------------------- convert_model
def _legacy_layer(**kwargs: Any) -> compat.LinearA8W8Quant:
    with pytest.warns(compat.LinearA8W8QuantDeprecationWarning):
        layer = compat.LinearA8W8Quant(K, N, **kwargs)
    layer.load_state_dict(
        {
            "weight": weight(),
            "scale": scale(),
            "bias": torch.arange(N, dtype=I32),
            **({"offset": torch.ones(N)} if kwargs.get("offset") else {}),
        }
    )
    return layer


def test_convert_model_replaces_and_shares_tensors() -> None:
    a = _legacy_layer(offset=True)
    b = _legacy_layer(output_dtype=F16)
    root = nn.Sequential(a, nn.ReLU(), nn.ModuleDict({"b": b, "again": a}))
    x = torch.randint(-128, 128, (4, K), dtype=I8, generator=gen(8))
    before = (a(x), b(x))
    params = {id(p) for p in root.parameters()}
    assert compat.convert_model(root) == 2  # a appears twice: one replacement
    new_a, new_b = root[0], root[2]["b"]
    assert type(new_a) is compat.LinearQuant and type(new_b) is compat.LinearQuant
    assert root[2]["again"] is new_a
    assert new_a.weight is a.weight and new_a.offset is a.offset and new_b.scale is b.scale
    assert {id(p) for p in root.parameters()} == params  # no copy
    assert new_a.output_dtype == I8 and new_b.output_dtype == F16
    assert torch.equal(new_a(x), before[0]) and torch.equal(new_b(x), before[1])
    assert compat.convert_model(root) == 0


def test_convert_model_leaves_subclasses_and_refuses_a_bare_layer() -> None:
    class Custom(compat.LinearA8W8Quant):  # type: ignore[misc]
        pass

    with pytest.warns(compat.LinearA8W8QuantDeprecationWarning):
        custom = Custom(K, N)
    root = nn.Sequential(custom)
    assert compat.convert_model(root) == 0 and root[0] is custom
    with pytest.raises(ValueError, match="the model itself"):
        compat.convert_model(_legacy_layer())


CONVERT_UPSTREAM = r"""
import json, torch
from torch import nn
import compat
from torch_npu.contrib.module import LinearA8W8Quant
import torch_npu.contrib.module.linear_a8w8_quant as legacy_module
upstream = type(LinearA8W8Quant(4, 3)).__module__
root = nn.Sequential(LinearA8W8Quant(16, 8, bias=True, offset=True), nn.ReLU(), LinearA8W8Quant(16, 8, bias=False, output_dtype=torch.float16))
g = torch.Generator().manual_seed(0)
sd = {"0.weight": torch.randint(-128, 128, (8, 16), dtype=torch.int8, generator=g), "0.scale": torch.rand(8, generator=g) * 0.01,
      "0.offset": torch.full((8,), 2.0), "0.bias": torch.arange(8, dtype=torch.int32),
      "2.weight": torch.randint(-128, 128, (8, 16), dtype=torch.int8, generator=g), "2.scale": torch.rand(8, generator=g) * 0.01}
placeholders = [root[0].weight.dtype, root[0].scale.dtype]
count = compat.convert_model(root)        # before loading: upstream's float32 placeholders are shared
shared = root[0].weight.dtype
root.load_state_dict(sd)                  # LinearQuant's loader adopts int8
x = torch.randint(-128, 128, (5, 16), dtype=torch.int8, generator=g)
want = compat.quant_matmul(x, sd["0.weight"].t(), compat.trans_quant_param(sd["0.scale"], sd["0.offset"]), offset=sd["0.offset"], bias=sd["0.bias"])
print(json.dumps({"upstream": upstream, "count": count, "types": [type(m).__name__ + "@" + type(m).__module__ for m in root],
                  "placeholders": [str(d) for d in placeholders], "shared": str(shared), "weight": str(root[0].weight.dtype),
                  "match": bool(torch.equal(root[0](x), want)), "fp16": str(root[2](x).dtype)}))
"""


@pytest.mark.parametrize("hook", ["upstream class", "compat's class via the legacy import hook"])
def test_convert_model_with_torch_npu_classes(hook: str) -> None:
    env = {"LINEAR_QUANT_COMPAT_DISABLE": "1"} if hook == "upstream class" else {}
    done = run_python(
        "import warnings; warnings.simplefilter('ignore', FutureWarning)\n" + CONVERT_UPSTREAM,
        standin="legacy",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout.strip().splitlines()[-1])
    if hook == "upstream class":
        assert info["upstream"] == "torch_npu.contrib.module.linear_a8w8_quant"
        assert (
            info["placeholders"] == ["torch.float32", "torch.float32"]
            and info["shared"] == "torch.float32"
        )
    else:
        assert info["upstream"] == "compat.nn.linear_a8w8_quant"
    assert info["count"] == 2
    assert info["types"][0] == info["types"][2] == "LinearQuant@compat.nn.linear_quant"
    assert (
        info["weight"] == "torch.int8" and info["match"] is True and info["fp16"] == "torch.float16"
    )
