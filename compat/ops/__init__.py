"""The math: quant-param encoding, the reference kernels and dispatch to torch_npu."""

from compat._torchload import ensure_torch

ensure_torch()

from compat.ops.encoding import decode_quant_param, trans_quant_param  # noqa: E402
from compat.ops.quant_matmul import quant_matmul  # noqa: E402

__all__ = ["decode_quant_param", "quant_matmul", "trans_quant_param"]
