# The vendor documentation's single-op example for LinearA8W8Quant, as users copy it.
# Kept unchanged on purpose (no seed, no type hints): compat's tests run it as it is.
import torch
import torch_npu

from torch_npu.contrib.module import LinearA8W8Quant

x1 = torch.randint(-1, 1, (1, 512), dtype=torch.int8).npu()
x2 = torch.randint(-1, 1, (128, 512), dtype=torch.int8).npu()
scale = torch.randn(1, dtype=torch.float32).npu()
offset = torch.randn(128, dtype=torch.float32).npu()
bias = torch.randint(-1, 1, (128,), dtype=torch.int32).npu()
in_features = 512
out_features = 128
output_dtype = torch.int8
model = LinearA8W8Quant(in_features, out_features, bias=True, offset=True, output_dtype=output_dtype)
model = model.npu()
model.weight.data = x2
model.scale.data = scale
model.offset.data = offset
model.bias.data = bias
output = model(x1)
print(torch_npu.npu.get_device_name(0), tuple(output.shape), output.dtype)
