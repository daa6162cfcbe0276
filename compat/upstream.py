"""Facts about upstream torch_npu's quantized-linear classes, in one torch-free place.

Module paths, class names, the legacy positional argument order, the strings older op
versions took for ``output_dtype`` and why int32 output is refused. ``compat.nn``,
the checkpoint unpickler, the legacy-import hook, the CLI and the static scanner all read
these names from here; dtypes are spelled as their ``torch`` attribute names
(``"int8"`` for ``torch.int8``) so that this module never imports torch.

Sources: docs/migration.md (the constructor forms per torch_npu release) and
docs/ops.md (the op's output dtypes).
"""

from __future__ import annotations

from typing import Final

#: The deprecated class and its replacement, as upstream names them.
LEGACY_CLASS: Final = "LinearA8W8Quant"
REPLACEMENT_CLASS: Final = "LinearQuant"

#: Upstream packages and modules that expose the two classes.
PACKAGE: Final = "torch_npu"
CONTRIB: Final = "torch_npu.contrib"
MODULE: Final = "torch_npu.contrib.module"
LEGACY_SUBMODULE: Final = "torch_npu.contrib.module.linear_a8w8_quant"
REPLACEMENT_SUBMODULE: Final = "torch_npu.contrib.module.linear_quant"

#: compat's own modules defining the two classes (what upstream paths resolve to).
COMPAT_LEGACY_MODULE: Final = "compat.nn.linear_a8w8_quant"
COMPAT_REPLACEMENT_MODULE: Final = "compat.nn.linear_quant"

#: Positional order of the legacy constructor (forms A1-A4 in docs/migration.md) after
#: ``(in_features, out_features)``.
LEGACY_POSITIONAL: Final = ("bias", "offset", "device", "dtype", "output_dtype")

#: Strings older op versions took for ``output_dtype`` (matched lowercased), mapped to
#: the name of the ``torch`` dtype each meant.
OUTPUT_DTYPE_ALIASES: Final[dict[str, str]] = {
    "int8": "int8",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}

#: Output dtypes (torch attribute names) the legacy class accepted; ``None`` meant int8.
LEGACY_OUTPUT_DTYPES: Final = ("int8", "float16", "bfloat16")
LEGACY_DEFAULT_OUTPUT_DTYPE: Final = "int8"

#: The string and dtype spellings of int32 output, which the legacy class always refused.
INT32_SPELLINGS: Final = frozenset({"int32", "int"})
INT32_REASON: Final = (
    "LinearA8W8Quant never supported int32 output (every released version rejected it)"
)


def legacy_alias(text: str) -> str | None:
    """The torch dtype name a legacy ``output_dtype`` string meant, or None if none."""
    return OUTPUT_DTYPE_ALIASES.get(text.lower())


#: Set (to True) on every module of compat's CPU stand-in for torch_npu
#: (:mod:`compat.testing`), so that the backend probe, the module-class look-up and the
#: legacy-import hook can tell it from a real torch_npu.
STAND_IN_ATTRIBUTE: Final = "__linear_quant_compat_stand_in__"
