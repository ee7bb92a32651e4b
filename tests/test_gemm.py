"""oneDNN-routed products must give F.linear's results (float32 rounding aside), gradients included, and
each machine's routes are chosen by timing, cached, and overridable."""

import json
import logging
import types

import pytest
import torch
import torch.nn.functional as F

from nmt.model import gemm
from tests.conftest import DAMAGE, TINY_DATA, damage_file, forced_routes, run_nmt


@pytest.fixture
def onednn_routes():
    if not gemm.ONEDNN:
        pytest.skip("this torch has no oneDNN")
    with forced_routes("onednn", "onednn", True):
        yield


@pytest.mark.parametrize("shape", [(7, 24), (3, 5, 24)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("weight_layout", ["contiguous", "transposed", "column slice"])
def test_linear_matches_float64_like_f_linear_does(shape, with_bias, weight_layout, route):
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


def test_float32_products_do_run_through_onednn_on_that_route(monkeypatch, onednn_routes):
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_weights_give_the_plain_weights_products(dtype, onednn_routes):
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_search_products_reach_onednn_in_a_few_row_counts_and_give_the_same_rows(monkeypatch, dtype, onednn_routes):
    """Search's live rows shrink by one as each hypothesis finishes; oneDNN builds a primitive per row count, so
    the counts are padded to multiples of ROW_BUCKET. The padding rows are cut off: each real row is the
    product it would be alone."""
    if dtype == torch.bfloat16 and not gemm.ONEDNN_BF16:
        pytest.skip("no bfloat16 oneDNN on this CPU")
    torch.manual_seed(0)
    weight, bias = torch.randn(40, 24).to(dtype), torch.randn(40).to(dtype)
    counts, real = [], torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise",
                        lambda *args: counts.append(args[0].size(0)) or real(*args))
    for packed in (gemm.prepacked(weight), weight):
        for rows in range(1, 50):
            x = torch.randn(rows, 24).to(dtype)
            got = gemm.product(x, packed, bias, step=True, varying_rows=True)
            assert got.shape == (rows, 40)
            torch.testing.assert_close(got, gemm.product(x, packed, bias, step=True))
    padded = counts[0::2]  # each padded call was followed by the plain one it is compared with
    assert sorted(set(padded)) == [16, 32, 48, 64] and all(c % gemm.ROW_BUCKET == 0 for c in padded)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_recurrence_weights_prepacked_from_a_transposed_view_give_its_products(dtype, onednn_routes):
    """The training recurrence prepacks its weights once per batch, whatever their layout."""
    if dtype == torch.bfloat16 and not gemm.ONEDNN_BF16:
        pytest.skip("no bfloat16 oneDNN on this CPU")
    torch.manual_seed(0)
    weight = torch.randn(40, 24).to(dtype)
    for plain in (weight, weight.t()):
        packed = gemm.prepacked(plain, step=True)
        assert packed.is_mkldnn and tuple(packed.shape) == tuple(plain.shape)
        for rows in (1, 64):
            x = torch.randn(rows, plain.size(1)).to(dtype)
            torch.testing.assert_close(gemm.product(x, packed, step=True), x @ plain.t(), rtol=1e-2 if dtype ==
                                       torch.bfloat16 else 1e-5, atol=1e-2 if dtype == torch.bfloat16 else 1e-5)
    assert not gemm.prepacked(weight.double(), step=True).is_mkldnn  # float64 keeps F.linear


def test_step_and_bulk_products_follow_their_own_routes(monkeypatch):
    if not gemm.ONEDNN:
        pytest.skip("this torch has no oneDNN")
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(1) or real(*args))
    x, weight = torch.randn(4, 8), torch.randn(6, 8)
    with forced_routes("onednn", "torch", False):
        gemm.product(x, weight, step=True)
        assert calls == [1]
        gemm.product(x, weight)
        gemm.linear(x.requires_grad_(), weight).sum().backward()
        assert calls == [1]  # bulk products stayed with torch
        assert not gemm.prepacked(weight).is_mkldnn  # prepacking was not chosen
        assert not gemm.prepacked(weight, step=True).is_mkldnn


@pytest.mark.parametrize("bulk, gradients", [("onednn", "torch"), ("torch", "onednn")])
def test_forward_and_gradient_products_over_a_batch_follow_their_own_routes(monkeypatch, bulk, gradients):
    """MKL computes the odd-width output projection slowly and its transposed gradient products well: the two
    kinds are routed apart, and the products are the same whichever route each takes."""
    if not gemm.ONEDNN:
        pytest.skip("this torch has no oneDNN")
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(1) or real(*args))
    torch.manual_seed(0)
    x, weight, bias = torch.randn(5, 8, requires_grad=True), torch.randn(7, 8, requires_grad=True), torch.randn(7)
    with forced_routes("torch", bulk, False, gradients=gradients):
        out = gemm.linear(x, weight, bias)
        assert len(calls) == (bulk == "onednn")
        out.pow(2).sum().backward()
        assert len(calls) == (bulk == "onednn") + 2 * (gradients == "onednn")  # input and weight gradients
    x_ref, weight_ref = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    torch.nn.functional.linear(x_ref, weight_ref, bias).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(weight.grad, weight_ref.grad)


@pytest.mark.parametrize("onednn_ms, expected", [(80.0, "onednn"), (95.0, "torch"), (120.0, "torch")])
def test_routes_are_chosen_by_timing_with_a_margin_then_cached(monkeypatch, tmp_path, onednn_ms, expected):
    """oneDNN must beat torch by 10% to be chosen; the choice is written once and read back afterwards."""
    if not gemm.ONEDNN:
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setenv("NMT_CACHE", str(tmp_path))
    monkeypatch.delenv("NMT_CPU_PRODUCTS", raising=False)
    timings = {"torch": 100.0, "onednn": onednn_ms}
    monkeypatch.setattr(gemm, "_faster", lambda products, repeats, seconds, name: (
        seconds.update({f"{name}_torch": timings["torch"], f"{name}_onednn": timings["onednn"]}),
        "onednn" if timings["onednn"] < gemm.MARGIN * timings["torch"] else "torch")[1])
    measured = gemm._decide()
    assert measured.source == "measured" and measured.step == measured.bulk == measured.gradients == expected
    entry = json.loads((tmp_path / "cpu_products.json").read_text())[gemm._machine_key()]
    assert entry["step"] == expected
    monkeypatch.setattr(gemm, "measure_routes", lambda: pytest.fail("measured again instead of using the cache"))
    cached = gemm._decide()
    assert (cached.source, cached.step, cached.bulk, cached.gradients, cached.prepacked, cached.step_prepacked) == (
        "cached", expected, expected, expected, measured.prepacked, measured.step_prepacked)


@pytest.mark.parametrize("forced", ["onednn", "torch"])
def test_nmt_cpu_products_overrides_the_measurement(monkeypatch, forced):
    if not gemm.ONEDNN:
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setenv("NMT_CPU_PRODUCTS", forced)
    monkeypatch.setattr(gemm, "measure_routes", lambda: pytest.fail("measured despite NMT_CPU_PRODUCTS"))
    routes = gemm._decide()
    assert (routes.step, routes.bulk, routes.prepacked, routes.source) == (forced, forced, forced == "onednn",
                                                                           "NMT_CPU_PRODUCTS")


def test_a_real_measurement_gives_a_complete_decision():
    if not gemm.ONEDNN:
        pytest.skip("this torch has no oneDNN")
    routes = gemm.measure_routes()
    assert {routes.step, routes.bulk, routes.gradients} <= {"onednn", "torch"}
    assert set(routes.milliseconds) == {"step_torch", "step_onednn", "step_forward", "step_prepacked", "bulk_torch",
                                        "bulk_onednn", "gradients_torch", "gradients_onednn", "search_plain",
                                        "search_prepacked"}
    assert all(ms > 0 for ms in routes.milliseconds.values())


@pytest.mark.parametrize("faster", ["onednn", "torch"])
def test_a_slow_spell_while_one_route_is_timed_does_not_decide_against_it(monkeypatch, faster):
    """On a simulated clock the faster route runs five times slower for seven calls after its first, more than
    one route's whole timing takes: the routes take turns, so its later rounds still count and it is chosen."""
    clock = {"now": 0.0, "calls": 0}

    def route(name):
        def run(x, weight):
            cost = 0.5 if name == faster else 1.0
            if name == faster:
                clock["calls"] += 1
                cost *= 5 if 2 <= clock["calls"] <= 8 else 1
            clock["now"] += cost
        return run

    monkeypatch.setattr(gemm, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    monkeypatch.setattr(gemm, "F", types.SimpleNamespace(linear=route("torch")))
    monkeypatch.setattr(gemm, "_onednn_product", route("onednn"))
    seconds: dict = {}
    assert gemm._faster([(None, None)], 2, seconds, "gradients") == faster
    assert seconds[f"gradients_{faster}"] == pytest.approx(0.5)


MEASURED = gemm.Routes("onednn", "torch", True, "measured", {"step_torch": 1.5}, False, "onednn")


@pytest.fixture
def measured_here(monkeypatch, tmp_path):
    """An empty cache of this test's own, and a measurement that gives MEASURED at once."""
    if not gemm.ONEDNN:
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setenv("NMT_CACHE", str(tmp_path))
    monkeypatch.delenv("NMT_CPU_PRODUCTS", raising=False)
    monkeypatch.setattr(gemm, "measure_routes", lambda: MEASURED)
    return tmp_path / "cpu_products.json"


def chosen(routes: gemm.Routes) -> tuple:
    return routes.step, routes.bulk, routes.gradients, routes.prepacked, routes.step_prepacked, routes.milliseconds


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_routes_cache_is_named_set_aside_and_written_again(measured_here, monkeypatch, caplog, damage):
    """A list, a string, an entry of the wrong types (they stopped every command) or a truncated file (measured
    again at every run, never rewritten): measured once more, the file set aside and written whole."""
    path = measured_here
    gemm._decide()
    other_machine = {"step": "torch", "bulk": "torch", "gradients": "torch", "prepacked": False,
                     "step_prepacked": False, "milliseconds": {}}
    wrong = {gemm._machine_key(): {**other_machine, "step": ["onednn"]}, "another CPU | v5": other_machine}
    bad = damage_file(path, damage, wrong_types=wrong)
    with caplog.at_level(logging.WARNING):
        routes = gemm._decide()
    assert routes.source == "measured" and chosen(routes) == chosen(MEASURED)
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith(f"{path}: ")
    (aside,) = path.parent.glob("cpu_products.json.bad-*")
    assert aside.read_bytes() == bad
    entries = json.loads(path.read_text())
    assert set(entries) == {gemm._machine_key()} | ({"another CPU | v5"} if damage == "wrong types" else set())
    monkeypatch.setattr(gemm, "measure_routes", lambda: pytest.fail("measured again instead of reading the cache"))
    again = gemm._decide()
    assert again.source == "cached" and chosen(again) == chosen(MEASURED)


def test_a_routes_cache_that_cannot_be_written_is_one_warning_and_one_measurement(measured_here, monkeypatch,
                                                                                  tmp_path, caplog):
    """The process keeps the routes it measured: timing them again at a later product could choose others."""
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("NMT_CACHE", str(blocker / "cache"))  # a folder under a file: cannot be created
    monkeypatch.setattr(gemm, "_routes", None)  # this process has not decided yet
    measurements = []
    monkeypatch.setattr(gemm, "measure_routes", lambda: measurements.append(1) or MEASURED)
    with caplog.at_level(logging.WARNING):
        routes = gemm.routes()
        gemm.linear(torch.randn(3, 8, requires_grad=True), torch.randn(5, 8)).sum().backward()
        assert gemm.routes() is routes
    assert measurements == [1] and routes.source == "measured" and chosen(routes) == chosen(MEASURED)
    (warning,) = caplog.records
    assert warning.getMessage().startswith(f"{blocker / 'cache' / 'cpu_products.json'}: cannot write it")


def test_translate_works_with_a_damaged_routes_cache(tiny_run, tmp_path, monkeypatch):
    """`nmt translate` (as train and serve) exited with a raw AttributeError naming no file."""
    if not gemm.ONEDNN:
        pytest.skip("this torch has no oneDNN")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "cpu_products.json").write_text('["a list"]\n')
    monkeypatch.setenv("NMT_CACHE", str(cache))
    monkeypatch.delenv("NMT_CPU_PRODUCTS", raising=False)
    output = tmp_path / "out.de"
    result = run_nmt("translate", "--checkpoint", str(tiny_run / "checkpoints" / "best.pt"), "--input",
                     str(TINY_DATA / "test.en"), "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert len(output.read_text().splitlines()) == len((TINY_DATA / "test.en").read_text().splitlines())
    (named,) = [line for line in result.stderr.splitlines() if "cpu_products.json" in line]
    assert f"{cache / 'cpu_products.json'}: not a JSON object of entries per machine; set aside as" in named
    (aside,) = cache.glob("cpu_products.json.bad-*")
    assert aside.read_text() == '["a list"]\n'
    (entry,) = json.loads((cache / "cpu_products.json").read_text()).values()
    assert gemm._entry_problem(entry) is None
