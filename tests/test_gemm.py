"""oneDNN-routed products must give F.linear's results (float32 rounding aside), gradients included."""

import pytest
import torch
import torch.nn.functional as F

from nmt.model import gemm


@pytest.mark.parametrize("shape", [(7, 24), (3, 5, 24)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("weight_layout", ["contiguous", "transposed", "column slice"])
def test_linear_matches_float64_like_f_linear_does(shape, with_bias, weight_layout):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    if weight_layout == "contiguous":
        weight = torch.randn(40, 24)
    elif weight_layout == "transposed":
        weight = torch.randn(24, 40).t()
    else:
        weight = torch.randn(40, 50)[:, 13:37]
    weight.requires_grad_(True)
    bias = torch.randn(40, requires_grad=True) if with_bias else None
    grad_out = torch.randn(*shape[:-1], 40)

    out = gemm.linear(x, weight, bias)
    out.backward(grad_out)
    ours = [out, x.grad, weight.grad] + ([bias.grad] if with_bias else [])
    # the truth: the same computation in float64
    x64 = x.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    b64 = bias.detach().double().requires_grad_(True) if with_bias else None
    out64 = F.linear(x64, w64, b64)
    out64.backward(grad_out.double())
    expected = [out64, x64.grad, w64.grad] + ([b64.grad] if with_bias else [])
    for got, want in zip(ours, expected):
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-5)


def test_product_routes_only_plain_float32_on_the_cpu():
    """float64 and autocast keep F.linear's own behaviour (dtype included)."""
    x, weight = torch.randn(4, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    assert gemm.product(x, weight).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gemm.linear(x.float(), weight.float()).dtype == torch.bfloat16


@pytest.mark.skipif(not gemm.ONEDNN, reason="this torch has no oneDNN")
def test_float32_products_do_run_through_onednn(monkeypatch):
    calls = []
    real = torch.ops.mkldnn._linear_pointwise

    class Spy:
        def __call__(self, *args):
            calls.append(args[0].shape)
            return real(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Spy())
    gemm.linear(torch.randn(3, 5, 8), torch.randn(6, 8))
    assert calls == [torch.Size([15, 8])]  # 3-D inputs go in as rows: oneDNN's fast kernels want 2-D


@pytest.mark.skipif(not gemm.ONEDNN_BF16, reason="no bfloat16 oneDNN on this CPU")
def test_bfloat16_products_go_to_onednn_only_with_prepacked_weights(monkeypatch):
    """Training's bfloat16 products measured faster with F.linear; search's prepacked ones with oneDNN."""
    torch.manual_seed(0)
    x, weight, bias = (torch.randn(37, 24).bfloat16(), torch.randn(40, 24).bfloat16(), torch.randn(40).bfloat16())
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(1) or real(*args))
    plain = gemm.product(x, weight, bias)
    assert calls == []
    packed = gemm.product(x, gemm.prepacked(weight), bias)
    assert calls == [1] and packed.dtype == torch.bfloat16
    truth = F.linear(x.double(), weight.double(), bias.double()).float()
    for got in (plain, packed):
        torch.testing.assert_close(got.float(), truth, rtol=1e-2, atol=1e-2)


@pytest.mark.skipif(not gemm.ONEDNN, reason="this torch has no oneDNN")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_weights_give_the_plain_weights_products(dtype):
    if dtype == torch.bfloat16 and not gemm.ONEDNN_BF16:
        pytest.skip("no bfloat16 oneDNN on this CPU")
    torch.manual_seed(0)
    weight, bias = torch.randn(40, 24).to(dtype), torch.randn(40).to(dtype)
    packed = gemm.prepacked(weight)
    assert packed.is_mkldnn
    for rows in (1, 7, 300):  # any row count, whatever the layout was chosen for
        x = torch.randn(rows, 24).to(dtype)
        torch.testing.assert_close(gemm.product(x, packed, bias), gemm.product(x, weight, bias))
    assert not gemm.prepacked(weight.double()).is_mkldnn  # float64 keeps F.linear
