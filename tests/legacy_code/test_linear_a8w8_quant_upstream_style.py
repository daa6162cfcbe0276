# An upstream-style unit test file for LinearA8W8Quant, written the way torch_npu's own
# test files are (module-level device name, skipIf on device names, expectedFailure,
# assertRtolEqual, run_tests). compat's tests run it unchanged on a CPU, with pytest and
# with `python file.py`, under linear-quant-compat's torch_npu stand-in.
import unittest

import torch
import torch_npu

from torch_npu.testing.testcase import TestCase, run_tests
from torch_npu.contrib.module import LinearA8W8Quant

DEVICE_NAME = torch_npu.npu.get_device_name(0)[:10]


class TestLinearA8W8Quant(TestCase):
    def _inputs(self):
        x1 = torch.randint(-5, 5, (8, 64), dtype=torch.int8).npu()
        x2 = torch.randint(-5, 5, (32, 64), dtype=torch.int8).npu()
        scale = (torch.rand(32, dtype=torch.float32) * 0.01).npu()
        offset = torch.randn(32, dtype=torch.float32).npu()
        bias = torch.randint(-5, 5, (32,), dtype=torch.int32).npu()
        return x1, x2, scale, offset, bias

    @unittest.skipIf(DEVICE_NAME == 'Ascend910A' or DEVICE_NAME == 'Ascend310P',
                     "OP `QuantBatchMatmulV3` is not supported on 910A or 310P, skip this ut!")
    def test_npu_linear_a8w8_quant_int8(self):
        x1, x2, scale, offset, bias = self._inputs()
        model = LinearA8W8Quant(64, 32, bias=True, offset=True, output_dtype=torch.int8)
        model = model.npu()
        model.weight.data = x2
        model.scale.data = scale
        model.offset.data = offset
        model.bias.data = bias
        npu_out = model(x1)
        deq_scale = torch_npu.npu_trans_quant_param(scale, offset)
        supported_output = torch_npu.npu_quant_matmul(x1, x2.t(), deq_scale, bias=bias)
        self.assertRtolEqual(supported_output, npu_out, 0.001)

    @unittest.skipIf(DEVICE_NAME == 'Ascend910A' or DEVICE_NAME == 'Ascend310P',
                     "OP `QuantBatchMatmulV3` is not supported on 910A or 310P, skip this ut!")
    def test_npu_linear_a8w8_quant_float16(self):
        x1, x2, scale, _, bias = self._inputs()
        model = LinearA8W8Quant(64, 32, bias=True, output_dtype=torch.float16)
        model = model.npu()
        model.weight.data = x2
        model.scale.data = scale
        model.bias.data = bias
        npu_out = model(x1)
        supported_output = torch_npu.npu_quant_matmul(x1, x2.t(), scale, bias=bias,
                                                      output_dtype=torch.float16)
        self.assertRtolEqual(supported_output, npu_out, 0.001)

    @unittest.expectedFailure
    def test_npu_linear_a8w8_quant_int32_output(self):
        LinearA8W8Quant(64, 32, bias=True, output_dtype=torch.int32)

    @unittest.expectedFailure
    def test_npu_linear_a8w8_quant_float16_scale(self):
        x1, x2, scale, _, bias = self._inputs()
        model = LinearA8W8Quant(64, 32, bias=True, output_dtype=torch.float16).npu()
        model.weight.data = x2
        model.scale.data = scale.half()
        model.bias.data = bias
        model(x1)


if __name__ == "__main__":
    run_tests()
