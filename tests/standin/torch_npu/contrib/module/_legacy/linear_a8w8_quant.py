"""Stand-in for upstream LinearA8W8Quant (variant A9 of docs/ops.md §3): a copy of LinearQuant,
not a subclass, warning FutureWarning without stacklevel.

Imported as ``torch_npu.contrib.module.linear_a8w8_quant``: the ``legacy`` variant adds
this folder to ``torch_npu.contrib.module.__path__``; in the ``future`` variant the
module cannot be found at all, as in a torch_npu release that deleted the file.
"""

import warnings

from torch_npu.contrib.module.linear_quant import LinearQuant as _Impl


class LinearA8W8Quant(_Impl.__bases__[0]):
    def __init__(
        self,
        in_features,
        out_features,
        *,
        bias=True,
        offset=False,
        pertoken_scale=False,
        device=None,
        dtype=None,
        output_dtype=None,
    ):
        # no stacklevel, as upstream
        warnings.warn(  # noqa: B028
            "torch_npu.contrib.module.LinearA8W8Quant is deprecated and will be "
            "removed in a future version. Use torch_npu.contrib.module.LinearQuant "
            "instead.",
            FutureWarning,
        )
        _Impl.__init__(
            self,
            in_features,
            out_features,
            bias=bias,
            offset=offset,
            pertoken_scale=pertoken_scale,
            device=device,
            dtype=dtype,
            output_dtype=output_dtype,
        )

    forward = _Impl.forward
