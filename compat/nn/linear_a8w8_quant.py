"""``compat.LinearA8W8Quant``: torch_npu's deprecated class, as a subclass of ``LinearQuant``.

Every constructor form that torch_npu ever shipped or had on master (docs/ops.md §3.1) is
accepted:

* A1-A4, positional: ``LinearA8W8Quant(in_features, out_features, bias=True, offset=False,
  device=None, dtype=None, output_dtype=None)`` (so upstream's own docstring example
  ``LinearA8W8Quant(5, 127, False)`` works);
* A5-A9, keyword-only: ``LinearA8W8Quant(in_features, out_features, *, bias=True,
  offset=False, pertoken_scale=False, device=None, dtype=None, output_dtype=None)``.

Old semantics are mapped explicitly: ``output_dtype=None`` (and the strings older op
versions took) become a ``torch.dtype``, ``None`` being pinned to ``torch.int8``;
``torch.int32`` output stays rejected as in every released LinearA8W8Quant; ``dtype`` is
accepted and ignored as upstream always did; ``device`` is honoured. The forward-time
dtype validation of variant A8 (docs/ops.md §3.3) is kept.

Each construction warns :class:`compat.LinearA8W8QuantDeprecationWarning` at the
caller's line with the equivalent ``LinearQuant`` call, which
:func:`replacement_call` / :func:`replacement_kwargs` also give for any module.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Final

import torch
from torch import nn
from typing_extensions import deprecated

from compat import _deprecation, upstream
from compat.nn.linear_quant import LinearQuant
from compat.ops.output_dtype import parse_output_dtype
from compat.ops.schemes import A8W8, SCHEMES, dtypes_for

__all__ = ["LinearA8W8Quant", "replacement_call", "replacement_kwargs"]

_NAME: Final = upstream.LEGACY_CLASS

# The positional order of variants A1-A4 after (in_features, out_features).
_POSITIONAL: Final = upstream.LEGACY_POSITIONAL
_ORDINALS: Final = ("3rd", "4th", "5th", "6th", "7th")

# Output dtypes of the legacy class (docs/migration.md), from the upstream facts.
_OUTPUT_DTYPES: Final = tuple(getattr(torch, n) for n in upstream.LEGACY_OUTPUT_DTYPES)
_DEFAULT_OUTPUT: Final = getattr(torch, upstream.LEGACY_DEFAULT_OUTPUT_DTYPE)

# Forward-time validation of variant A8 (docs/migration.md), from the A8W8 dtype rows.
_SCALE_DTYPES: Final = frozenset(dtypes_for("scale", (A8W8,)))
_BIAS_DTYPES: Final = frozenset(dtypes_for("bias", (A8W8,)))
_OFFSET_DTYPES: Final = frozenset(dtypes_for("offset", (A8W8,)))
_OUTPUT_SET: Final = frozenset(_OUTPUT_DTYPES)
_FORWARD_OUTPUT: Final = frozenset({None, *_OUTPUT_DTYPES})  # A8 allows None (= int8)
_F32: Final = torch.float32
_INPUT_PAIRS: Final = frozenset((s.storage_dtype, s.storage_dtype) for s in SCHEMES)

_UNSET: Any = object()


def _dtype_list(dtypes: frozenset[torch.dtype] | tuple[torch.dtype, ...]) -> str:
    order = (torch.int8, torch.int32, torch.int64, torch.float16, torch.bfloat16, torch.float32)
    return ", ".join(str(d) for d in order if d in dtypes)


def legacy_output_dtype(cls_name: str, value: object) -> torch.dtype:
    """Map a legacy ``output_dtype`` (dtype, None or string) to the dtype it meant.

    ``None`` meant int8 in every version of the op; int32 was never available through
    LinearA8W8Quant in a release (ValueError pointing to LinearQuant).
    """
    dtype = parse_output_dtype(
        value,
        func=cls_name,
        allowed=_OUTPUT_DTYPES,
        none=_DEFAULT_OUTPUT,
        strings=True,
        refuse=lambda got, dtype: _int32_refusal(cls_name, got, dtype),
    )
    assert dtype is not None  # None maps to the default
    return dtype


def _int32_refusal(cls_name: str, value: object, dtype: torch.dtype | None) -> ValueError | None:
    """The error for an int32 output (dtype or string spelling), else None."""
    spelled = value.lower() if isinstance(value, str) else None
    if dtype != torch.int32 and spelled not in upstream.INT32_SPELLINGS:
        return None
    return ValueError(
        f"{cls_name}: argument 'output_dtype' is {value!r}, but {upstream.INT32_REASON}; use "
        f"LinearQuant(..., output_dtype=torch.int32) for int32 output "
        f"({_deprecation.REPLACEMENT_IMPORT})"
    )


def _require_bool(cls_name: str, name: str, value: object) -> bool:
    """Upstream tested these flags for truthiness (``if bias:``): keep accepting 0/1,
    None and numpy booleans, but refuse strings, which are always a mistake here
    (``"False"`` is truthy)."""
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{cls_name}: argument {name!r} must be True or False, got "
            f"{type(value).__name__} {value!r}"
        )
    return bool(value)


def replacement_kwargs(module: nn.Module) -> dict[str, Any]:
    """Keyword arguments of the ``compat.LinearQuant`` equivalent to ``module``.

    ``module`` is a ``compat.LinearA8W8Quant`` or torch_npu's own ``LinearA8W8Quant`` of
    any variant (also one unpickled from an old checkpoint, whose ``__init__`` never ran).
    Everything is read from the module as it is now: ``in_features``, ``out_features``,
    which of ``bias``/``offset``/``pertoken_scale`` exist, the device of ``weight`` and
    ``output_dtype`` (``None`` and legacy strings mapped to the dtype they meant, so the
    result always names it). ``LinearQuant(**replacement_kwargs(m))`` then takes
    ``m.state_dict()`` and computes bit-identical outputs.

    Raises TypeError for a module without these attributes and ValueError for an
    ``output_dtype`` that LinearA8W8Quant never supported (int32).
    """
    name = type(module).__name__
    try:
        in_features = module.in_features
        out_features = module.out_features
        weight = module.weight
        bias = module.bias
        offset = module.offset
        output_dtype = module.output_dtype
    except AttributeError as err:
        raise TypeError(
            f"replacement_kwargs: {name} is not a LinearA8W8Quant-like module ({err})"
        ) from None
    pertoken_scale = getattr(module, "pertoken_scale", None)  # absent before variant A5
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"replacement_kwargs: {name}.weight is {weight!r}, not a tensor")
    return {
        "in_features": in_features,
        "out_features": out_features,
        "bias": bias is not None,
        "offset": offset is not None,
        "pertoken_scale": pertoken_scale is not None,
        "device": weight.device,
        "output_dtype": legacy_output_dtype(name, output_dtype),
    }


def format_call(kwargs: dict[str, Any]) -> str:
    """``LinearQuant(...)`` source text for :func:`replacement_kwargs`' result.

    ``pertoken_scale`` is written only when True and ``device`` only when not the CPU.
    """
    parts = [repr(kwargs["in_features"]), repr(kwargs["out_features"])]
    parts.append(f"bias={kwargs['bias']!r}")
    parts.append(f"offset={kwargs['offset']!r}")
    if kwargs["pertoken_scale"]:
        parts.append("pertoken_scale=True")
    device = torch.device(kwargs["device"])
    if device.type != "cpu":
        parts.append(f"device={str(device)!r}")
    parts.append(f"output_dtype={kwargs['output_dtype']!r}")
    return f"LinearQuant({', '.join(parts)})"


def replacement_call(module: nn.Module) -> str:
    """The ``LinearQuant(...)`` call equivalent to ``module``, as the warning writes it.

    E.g. ``LinearQuant(512, 128, bias=True, offset=True, output_dtype=torch.int8)``.
    """
    return format_call(replacement_kwargs(module))


@deprecated(
    "LinearA8W8Quant is deprecated; use LinearQuant (from compat import LinearQuant)",
    category=None,  # static checkers only: the runtime warning is ours (see __init__)
)
class LinearA8W8Quant(LinearQuant):
    """Deprecated: torch_npu's ``LinearA8W8Quant`` on top of :class:`compat.LinearQuant`.

    Accepts the positional form of variants A1-A4 and the keyword-only form of A5+ (see
    the module docstring), maps them to ``LinearQuant`` and warns
    :class:`compat.LinearA8W8QuantDeprecationWarning` at the caller's line. Forward is
    LinearQuant's after variant A8's dtype checks (ValueError naming the tensor, its
    dtype and the dtypes allowed).
    """

    if TYPE_CHECKING:  # what type checkers see: every legacy form (docs/migration.md)

        def __init__(
            self,
            in_features: int,
            out_features: int,
            bias: bool = True,
            offset: bool = False,
            device: torch.device | str | int | None = None,
            dtype: torch.dtype | None = None,
            output_dtype: torch.dtype | str | None = None,
            *,
            pertoken_scale: bool = False,
        ) -> None: ...

    def __init__(  # type: ignore[no-redef]  # the runtime signature behind the one above
        self,
        in_features: int,
        out_features: int,
        *args: Any,
        bias: Any = _UNSET,
        offset: Any = _UNSET,
        pertoken_scale: Any = _UNSET,
        device: Any = _UNSET,
        dtype: Any = _UNSET,
        output_dtype: Any = _UNSET,
    ) -> None:
        cls_name = type(self).__name__
        given: dict[str, Any] = {
            "bias": bias,
            "offset": offset,
            "device": device,
            "dtype": dtype,
            "output_dtype": output_dtype,
        }
        if len(args) > len(_POSITIONAL):
            raise TypeError(
                f"{cls_name}() takes from 3 to {3 + len(_POSITIONAL)} positional arguments "
                f"but {3 + len(args)} were given"
            )
        positional: list[tuple[str, Any, str]] = []
        for name, value, ordinal in zip(_POSITIONAL, args, _ORDINALS, strict=False):
            if given[name] is not _UNSET:
                raise TypeError(f"{cls_name}() got multiple values for argument {name!r}")
            given[name] = value
            positional.append((name, value, ordinal))
        defaults = {"bias": True, "offset": False, "device": None, "dtype": None}
        for name, default in defaults.items():
            if given[name] is _UNSET:
                given[name] = default
        has_bias = _require_bool(cls_name, "bias", given["bias"])
        has_offset = _require_bool(cls_name, "offset", given["offset"])
        has_pertoken = _require_bool(
            cls_name, "pertoken_scale", False if pertoken_scale is _UNSET else pertoken_scale
        )
        # ``dtype``: any value, ignored, as by every torch_npu version (spec §3)
        out = legacy_output_dtype(
            cls_name, None if given["output_dtype"] is _UNSET else given["output_dtype"]
        )
        super().__init__(
            in_features,
            out_features,
            bias=has_bias,
            offset=has_offset,
            pertoken_scale=has_pertoken,
            device=given["device"],
            output_dtype=out,
        )
        call = replacement_call(self)
        # Set only now: when the warning is an error, pytest reports the user's line as the
        # crash location, while errors about the arguments above keep this frame.
        __tracebackhide__ = True
        _deprecation.report(
            "construct",
            _NAME,
            _construction_message(cls_name, call, positional),
            call,
        )

    # what inspect.signature and IDEs show: the legacy parameters with their real
    # defaults (the positional form of A1-A4; A5's keywords bind to it too)
    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("in_features", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("out_features", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *(
                inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=value)
                for name, value in zip(_POSITIONAL, (True, False, None, None, None), strict=True)
            ),
            inspect.Parameter("pertoken_scale", inspect.Parameter.KEYWORD_ONLY, default=False),
        ]
    )

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling a ``torch.save(model)`` of any variant: what an older one did not
        have is set to what it meant, ``pertoken_scale`` (added in A5) absent and
        ``output_dtype`` (added in A3) None, so that printing and forward work."""
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        if "pertoken_scale" not in self._parameters and "pertoken_scale" not in self.__dict__:
            self.register_parameter("pertoken_scale", None)
        if "output_dtype" not in self.__dict__:
            self.output_dtype = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Variant A8's checks cost no time on valid input: of the dtypes A8 rejects, only
        # output_dtype=int32 gets past LinearQuant's forward (input/weight pair) and
        # quant_matmul (its dtype table, checked on every backend before anything runs),
        # so that is the one check made up front. When LinearQuant's forward raises,
        # A8's checks run in A8's order and, if one fails, give A8's error instead.
        if self.output_dtype not in _FORWARD_OUTPUT:
            raise self._output_dtype_error()
        try:
            return LinearQuant.forward(self, x)
        except (TypeError, ValueError, AttributeError) as err:
            a8 = self._a8_error(x)
            if a8 is None:
                raise
            raise a8 from err

    def _a8_error(self, x: object) -> Exception | None:
        """The error of variant A8's forward checks (docs/ops.md §3.3, in its order), if any."""
        name = type(self).__name__
        weight = self.weight
        if not isinstance(x, torch.Tensor):
            return TypeError(f"{name}: input must be a torch.Tensor, got {type(x).__name__}")
        if (x.dtype, weight.dtype) not in _INPUT_PAIRS:
            return ValueError(
                f"{name}: input has dtype {x.dtype} and weight has dtype {weight.dtype}; "
                f"allowed: both torch.int8 (A8W8) or both torch.int32 (A4W4)"
            )
        checks: tuple[tuple[str, object, frozenset[torch.dtype]], ...] = (
            ("scale", self.scale, _SCALE_DTYPES),
            ("offset", self.offset, _OFFSET_DTYPES),
            ("bias", self.bias, _BIAS_DTYPES),
            ("pertoken_scale", self.pertoken_scale, frozenset({_F32})),
        )
        for tensor_name, tensor, allowed in checks:
            if tensor is None and tensor_name != "scale":
                continue
            if not isinstance(tensor, torch.Tensor):
                return TypeError(f"{name}: {tensor_name!r} must be a tensor, got {tensor!r}")
            if tensor.dtype not in allowed:
                return ValueError(
                    f"{name}: {tensor_name!r} has dtype {tensor.dtype}; allowed: "
                    f"{_dtype_list(allowed)}"
                )
        if self.output_dtype not in _FORWARD_OUTPUT:
            return self._output_dtype_error()
        return None

    def _output_dtype_error(self) -> ValueError:
        hint = " (use LinearQuant for int32 output)" if self.output_dtype == torch.int32 else ""
        return ValueError(
            f"{type(self).__name__}: output_dtype is {self.output_dtype!r}; allowed: "
            f"{_dtype_list(_OUTPUT_SET)}, None{hint}"
        )


def _construction_message(cls_name: str, call: str, positional: list[tuple[str, Any, str]]) -> str:
    if cls_name == _NAME:
        head = f"{_NAME} is deprecated"
    else:
        head = f"{cls_name} subclasses {_NAME}, which is deprecated (make LinearQuant its base)"
    replacement = _deprecation.REPLACEMENT_IMPORT
    text = f"{head}; use LinearQuant instead ({replacement}). Equivalent call: {call}."
    if positional:
        listed = ", ".join(f"{n}={v!r} ({o})" for n, v, o in positional)
        text += f" Legacy positional arguments: {listed}; LinearQuant takes them by keyword only."
    return f"{text} {_deprecation.removal_notice()}"
