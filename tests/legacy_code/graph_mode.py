# A graph-mode weight pass written the way torchair's use_internal_format_weight is: it
# reaches torch_npu through sys.modules and checks classes against upstream's own module
# paths, then the model is compiled. compat's tests run it under the CPU stand-in and with
# a (test) real torch_npu.
import sys

import torch


def use_internal_format_weight(model):
    torch_npu = sys.modules['torch_npu']
    a8w8 = torch_npu.contrib.module.linear_a8w8_quant.LinearA8W8Quant
    linear_quant = torch_npu.contrib.module.linear_quant.LinearQuant
    device_name = torch_npu.npu.get_device_name()
    processed = []
    for name, module in model.named_modules():
        if isinstance(module, a8w8):
            module.scale.data = torch_npu.npu_trans_quant_param(module.scale.data, module.offset)
            if 'Ascend310P' in device_name:
                module.weight.data = torch_npu.npu_format_cast(module.weight.data, 29)
            processed.append((name, 'LinearA8W8Quant'))
        elif isinstance(module, linear_quant):
            module.weight.data = torch_npu.npu_format_cast(module.weight.data, 29)
            processed.append((name, 'LinearQuant'))
    return processed


def compiled(model):
    use_internal_format_weight(model)
    return torch.compile(model, backend="inductor")
