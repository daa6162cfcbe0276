"""Stand-in for upstream LinearQuant (variant L3 of docs/ops.md §3): float32 placeholders,
``device``/``dtype`` ignored, fp32 scale encoded on every forward."""

import torch
from torch import nn

import torch_npu


class LinearQuant(nn.Module):
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
        nn.Module.__init__(self)  # not super(): LinearA8W8Quant borrows this __init__
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty((out_features, in_features)), requires_grad=False)
        self.scale = nn.Parameter(torch.empty(out_features), requires_grad=False)
        self.output_dtype = output_dtype
        self.offset = (
            nn.Parameter(torch.empty(out_features, dtype=torch.float32), requires_grad=False)
            if offset
            else None
        )
        self.pertoken_scale = (
            nn.Parameter(torch.empty(out_features, dtype=torch.float32), requires_grad=False)
            if pertoken_scale
            else None
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=torch.int32), requires_grad=False)
            if bias
            else None
        )

    def forward(self, x):
        if not (
            (x.dtype == torch.int8 and self.weight.dtype == torch.int8)
            or (x.dtype == torch.int32 and self.weight.dtype == torch.int32)
        ):
            raise ValueError("input and weight must both be int8 or both int32")
        scale = self.scale
        if (
            self.scale.dtype == torch.float32
            and self.pertoken_scale is None
            and self.output_dtype not in (torch.bfloat16, torch.int32)
        ):
            scale = torch_npu.npu_trans_quant_param(self.scale, self.offset)
        return torch_npu.npu_quant_matmul(
            x,
            self.weight.transpose(-2, -1),
            scale,
            offset=self.offset,
            pertoken_scale=self.pertoken_scale,
            bias=self.bias,
            output_dtype=self.output_dtype,
        )
