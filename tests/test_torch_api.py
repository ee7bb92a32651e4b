"""The private torch operators the fast paths call, each checked by name against its public equivalent: a
torch release that drops or changes one fails here, naming it, not deep inside a training step."""

import pytest
import torch
import torch.nn.functional as F

from nmt.model import gemm


def require(namespace, name: str, where: str):
    if not hasattr(namespace, name):
        pytest.fail(f"torch {torch.__version__} has no {where}.{name}, which nmt's fast paths call")
    return getattr(namespace, name)


def test_the_fused_recurrence_backward_ops():
    x, grad = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    sigmoid_backward = require(torch.ops.aten, "sigmoid_backward", "torch.ops.aten")
    tanh_backward = require(torch.ops.aten, "tanh_backward", "torch.ops.aten")
    s, t = torch.sigmoid(x), torch.tanh(x)
    torch.testing.assert_close(sigmoid_backward(grad, s), grad * s * (1 - s))
    torch.testing.assert_close(tanh_backward(grad, t), grad * (1 - t * t))


def test_autocast_queries():
    get_dtype = require(torch, "get_autocast_dtype", "torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and get_dtype("cpu") == torch.bfloat16
    assert require(torch.backends.cpu, "get_cpu_capability", "torch.backends.cpu")() in (
        "DEFAULT", "NO AVX", "AVX2", "AVX512", "ZVECTOR", "VSX", "SVE256", "SVE")


def test_the_cuda_decoder_steps_fused_lstm_cell_exists():
    require(torch.ops.aten, "_thnn_fused_lstm_cell", "torch.ops.aten")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_the_onednn_product_ops():
    mkldnn = torch.ops.mkldnn
    require(mkldnn, "_is_mkldnn_bf16_supported", "torch.ops.mkldnn")()
    linear_pointwise = require(mkldnn, "_linear_pointwise", "torch.ops.mkldnn")
    reorder = require(mkldnn, "_reorder_linear_weight", "torch.ops.mkldnn")
    assert gemm.ONEDNN
    x, weight, bias = torch.randn(5, 24), torch.randn(40, 24), torch.randn(40)
    expected = F.linear(x, weight, bias)
    torch.testing.assert_close(linear_pointwise(x, weight, bias, "none", [], ""), expected, rtol=1e-4, atol=1e-5)
    packed = reorder(weight)
    torch.testing.assert_close(gemm._onednn_product(x, packed, bias), expected, rtol=1e-4, atol=1e-5)
