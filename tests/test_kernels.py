"""The recurrence's C kernels must compute what `TorchSteps` (PyTorch's operations) computes, at any size,
in float32 and bf16, and a machine that cannot build them must still train."""

import itertools
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt.device import cpu_flags
from nmt.model import kernels, recurrence
from nmt.model.recurrence import TorchSteps


@pytest.fixture
def kernels_built():
    if kernels.library() is None:
        why = kernels.describe()
        if os.environ.get("NMT_REQUIRE_KERNELS"):  # CI sets it: there the kernels must be tested, not skipped
            pytest.fail(f"the kernels could not be built: {why}")
        pytest.skip(f"the kernels could not be built: {why}")


needs_kernels = pytest.mark.usefixtures("kernels_built")
BF16_ULP = 2.0 ** -7  # bf16 keeps 8 significant bits: two roundings may differ by one unit in the last place


def close(actual, expected, dtype):
    if dtype == torch.bfloat16:
        torch.testing.assert_close(actual.float(), expected.float(), rtol=BF16_ULP, atol=BF16_ULP)
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)  # sums in another order


SEEDS = itertools.count(1)


def rand(*shape, dtype=torch.float32, scale=1.0, seed=None):
    seed = next(SEEDS) if seed is None else seed
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


SIZES = [(1, 5), (3, 24), (4, 300)]  # (batch, hidden): 300 spans more than one of kernels.c's column blocks


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,hidden", SIZES)
@pytest.mark.parametrize("row_bias,masked", [(False, True), (True, False), (True, True)])
def test_cell_forward_and_backward_equal_torchs(dtype, batch, hidden, row_bias, masked):
    pre = rand(batch, 4 * hidden, dtype=dtype, scale=3)
    add = rand(4 * hidden) if row_bias else rand(batch, 4 * hidden)
    cell_prev = rand(batch, 2 * hidden)[:, hidden:]  # a view with a row stride of its own
    mask = (rand(batch, hidden) > 0).float() / 0.7 if masked else None
    results = []
    for ops in (kernels, TorchSteps):
        act, cell, tanh_cell = torch.empty(batch, 4 * hidden), torch.empty(batch, hidden), torch.empty(batch, hidden)
        h = torch.zeros(batch, 3 * hidden, dtype=dtype)[:, hidden:2 * hidden]  # a column slice, as in xh
        above = torch.zeros(batch, 2 * hidden, dtype=dtype)[:, :hidden]
        ops.cell_forward(pre, add, cell_prev, act, cell, tanh_cell, h, mask, above)
        d_h, d_cell = rand(batch, hidden, seed=100), rand(batch, hidden, seed=200)
        d_gates = torch.empty(batch, 4 * hidden, dtype=dtype)
        ops.cell_backward(d_h, d_cell, act, tanh_cell, cell_prev, d_gates)
        results.append((act, cell, tanh_cell, h, above, d_cell, d_gates))
    for (name, fused), reference in zip(zip(["act", "cell", "tanh_cell", "h", "above", "d_cell", "d_gates"],
                                            results[0]), results[1]):
        low = name in ("h", "above", "d_gates")  # stored in the compute dtype
        close(fused, reference, dtype if low else torch.float32)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,hidden", SIZES)
@pytest.mark.parametrize("src_len", [1, 7])
def test_attention_forward_and_backward_equal_torchs(dtype, batch, hidden, src_len):
    keys, memory = rand(batch, src_len, hidden, scale=0.3), rand(batch, src_len, hidden)
    bias = torch.zeros(batch, src_len)
    bias[0, src_len // 2 + 1:] = float("-inf")  # padding in the first sentence
    query = rand(batch, 2 * hidden, dtype=dtype)[:, hidden:]
    d_combine = rand(batch, 2 * hidden, dtype=dtype)
    results = []
    for ops in (kernels, TorchSteps):
        probs = torch.zeros(batch, 3, src_len)  # (B, T, S): the kernels write column t = 1
        combine = torch.empty(batch, 2 * hidden, dtype=dtype)
        ops.attention_forward(query, keys, memory, bias, probs[:, 1], combine)
        d_context, d_scores = torch.zeros(batch, 3, hidden), torch.zeros(batch, 3, src_len)
        d_query = rand(batch, hidden, seed=300)
        ops.attention_backward(d_combine, probs[:, 1], keys, memory, d_context[:, 1], d_scores[:, 1], d_query)
        results.append((probs, combine, d_context, d_scores, d_query))
    probs = results[0][0]
    assert torch.all(probs[0, 1, src_len // 2 + 1:] == 0), "padding must get exactly no attention"
    torch.testing.assert_close(probs[:, 1].sum(1), torch.ones(batch))
    assert torch.all(probs[:, [0, 2]] == 0), "only column t is written"
    for name, fused, reference in zip(["probs", "combine", "d_context", "d_scores", "d_query"], *results):
        close(fused, reference, dtype if name == "combine" else torch.float32)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,hidden", SIZES)
@pytest.mark.parametrize("masked,fed", [(False, False), (True, True)])
def test_combination_and_gradient_split_equal_torchs(dtype, batch, hidden, masked, fed):
    pre = rand(batch, hidden, dtype=dtype, scale=2)
    mask = (rand(batch, hidden) > 0).float() / 0.7 if masked else None
    grad = rand(batch, 2 * hidden, dtype=dtype)[:, :hidden]
    feed = rand(batch, hidden) if fed else None
    d_xh = rand(batch, 2 * hidden, dtype=dtype)
    results = []
    for ops in (kernels, TorchSteps):
        attentional = torch.empty(batch, hidden)
        out = torch.zeros(batch, 2 * hidden, dtype=dtype)[:, hidden:]
        ops.combine_forward(pre, attentional, out, mask)
        d_pre = torch.empty(batch, hidden, dtype=dtype)
        ops.combine_backward(grad, attentional, d_pre, feed, mask)
        d_h, below, assigned = torch.empty(batch, hidden), rand(batch, hidden, seed=400), torch.empty(batch, hidden)
        ops.split_grad(d_xh, d_h, below, mask)
        ops.split_grad(d_xh, torch.empty(batch, hidden), assigned, mask, accumulate=False)
        results.append((attentional, out, d_pre, d_h, below, assigned))
    for name, fused, reference in zip(["attentional", "out", "d_pre", "d_h", "below", "assigned"], *results):
        close(fused, reference, dtype if name in ("out", "d_pre") else torch.float32)


@needs_kernels
def test_nonlinearities_hold_at_the_extremes():
    """The kernels' own exp: sigmoid and tanh stay in range, finite, and match torch's at large inputs."""
    x = torch.cat([torch.linspace(-100, 100, 4001), torch.tensor([-1e4, 1e4, -88.5, 88.5, 0.0])]).view(1, -1)
    attentional = torch.empty_like(x)
    kernels.combine_forward(x, attentional, torch.empty_like(x))
    torch.testing.assert_close(attentional, torch.tanh(x), rtol=0, atol=2e-7)
    hidden = x.size(1)
    act = torch.empty(1, 4 * hidden)
    kernels.cell_forward(x.repeat(1, 4), torch.zeros(4 * hidden), torch.zeros(1, hidden), act, torch.empty(1, hidden),
                         torch.empty(1, hidden), torch.empty(1, hidden))
    torch.testing.assert_close(act[:, :hidden], torch.sigmoid(x), rtol=0, atol=2e-7)
    assert torch.isfinite(act).all()


@needs_kernels
@pytest.mark.parametrize("attention,input_feed,layers,bf16", [
    ("general", True, 2, False), ("dot", True, 3, False), ("general", False, 2, False), ("general", True, 1, False),
    ("general", True, 2, True),
])
def test_recurrence_on_kernels_equals_recurrence_on_torch(monkeypatch, attention, input_feed, layers, bf16):
    """The whole training recurrence, forward and backward, dropout on: the kernels change no result beyond
    float32 rounding (bf16: beyond what the compute dtype's rounding allows)."""
    from test_recurrence import outputs_and_gradients

    calls = []
    cell_forward = kernels.cell_forward
    monkeypatch.setattr(kernels, "cell_forward", lambda *args: calls.append(1) or cell_forward(*args))
    fused = outputs_and_gradients(True, attention, input_feed, layers, dtype=torch.float32, bf16=bf16)
    assert calls, "the kernels ran"
    monkeypatch.setattr(recurrence.kernels, "usable", lambda *args: False)
    reference = outputs_and_gradients(True, attention, input_feed, layers, dtype=torch.float32, bf16=bf16)
    tolerance = 0.02 if bf16 else 1e-5  # of each tensor's norm
    for name, expected in [("outputs", reference[0]), *reference[1].items()]:
        actual = fused[0] if name == "outputs" else fused[1][name]
        assert float((actual - expected).norm()) <= tolerance * float(expected.norm()), name


def test_without_a_compiler_the_recurrence_runs_on_torch(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NMT_CACHE", str(tmp_path))
    monkeypatch.delenv("NMT_CPU_KERNELS", raising=False)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert kernels._build() == (None, f"no C compiler ({tmp_path / 'no-such-compiler'}) on PATH")
    monkeypatch.setenv("CC", "false")  # a compiler that fails
    lib, why = kernels._build()
    assert lib is None and why.startswith(f"{kernels.shutil.which('false')} failed")
    assert not list((tmp_path / "kernels").glob("*.so")), "a failed build leaves nothing behind"
    monkeypatch.delenv("CC")
    monkeypatch.setenv("NMT_CPU_KERNELS", "0")
    assert kernels._build() == (None, "NMT_CPU_KERNELS=0")
    kernels._loaded.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="nmt.model.kernels"):
            assert kernels.library() is None
            assert not kernels.usable(torch.float32, torch.float32, torch.zeros(1))
        assert "fused CPU kernels unavailable (NMT_CPU_KERNELS=0)" in caplog.text
        from test_recurrence import outputs_and_gradients
        outputs, gradients = outputs_and_gradients(True, dtype=torch.float32)
        assert torch.isfinite(outputs).all() and all(torch.isfinite(g).all() for g in gradients.values())
    finally:
        kernels._loaded.cache_clear()


def x86_64_v3() -> bool:
    """Whether this CPU runs code built for AVX2 CPUs (x86-64-v3: AVX2, FMA, BMI1/2, MOVBE, ...)."""
    flags = cpu_flags()
    return all(flag in flags for flag in ("avx2", "fma", "bmi1", "bmi2", "movbe", "f16c"))


@needs_kernels
@pytest.mark.skipif(not x86_64_v3(), reason="needs an x86-64 CPU with AVX2")
def test_a_build_for_an_avx2_cpu_computes_the_same(monkeypatch, tmp_path):
    """The kernels are built for the CPU they run on, and the compiler vectorizes an AVX2 CPU's build
    (Zen 3) differently from an AVX-512 one's: it must compute the same."""
    monkeypatch.setenv("NMT_CACHE", str(tmp_path))
    lib, how = kernels._build([flag.replace("-march=native", "-march=x86-64-v3") for flag in kernels.FLAGS])
    assert lib is not None, how
    monkeypatch.setattr(kernels, "library", lambda: lib)
    for dtype in (torch.float32, torch.bfloat16):
        test_cell_forward_and_backward_equal_torchs(dtype, 4, 300, True, True)
        test_attention_forward_and_backward_equal_torchs(dtype, 4, 300, 7)
        test_combination_and_gradient_split_equal_torchs(dtype, 4, 300, True, True)


@needs_kernels
def test_a_build_is_cached_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("NMT_CACHE", str(tmp_path))
    first, how = kernels._build()
    assert first is not None and how.startswith("built ")
    second, how_again = kernels._build()
    assert how_again == "cached " + how.removeprefix("built ")
    assert len(list((tmp_path / "kernels").iterdir())) == 1, "no temporary files left beside the library"


def how_the_next_run_finds_them() -> str:
    """`kernels._build()`'s account in a new process, as the next run would give it."""
    done = subprocess.run([sys.executable, "-c", "from nmt.model import kernels; print(kernels._build()[1])"],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    return done.stdout.strip()


@needs_kernels
@pytest.mark.parametrize("damage", ["not a library", "truncated", "another library"])
def test_a_damaged_cached_library_is_named_set_aside_and_built_again(monkeypatch, tmp_path, caplog, damage):
    """A corrupt library once sent every later run to PyTorch's slower operations, saying so only at info level."""
    monkeypatch.setenv("NMT_CACHE", str(tmp_path))
    lib, how = kernels._build()
    target = Path(how.removeprefix("built "))
    good = target.read_bytes()
    target.unlink()  # a new file: this process has the old one mapped, and cutting that short would kill it
    if damage == "not a library":
        target.write_bytes(b"not a library\n")
    elif damage == "truncated":  # loading it unchecked kills the process (SIGBUS)
        target.write_bytes(good[: len(good) // 2])
    else:  # a sound library without the kernels' functions
        (tmp_path / "empty.c").write_text("int nothing(void) { return 0; }\n")
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(target), str(tmp_path / "empty.c")], check=True)
    bad = target.read_bytes()
    with caplog.at_level(logging.WARNING):
        lib, how = kernels._build()
    assert lib is not None and how == f"built {target}"
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith(f"{target}: not a library")
    (aside,) = target.parent.glob(target.name + ".bad-*")
    assert aside.read_bytes() == bad
    assert how_the_next_run_finds_them() == f"cached {target}"


@needs_kernels
def test_kernels_are_built_for_the_process_where_the_cache_cannot_be_written(monkeypatch, tmp_path, caplog):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("NMT_CACHE", str(blocker / "cache"))  # a folder under a file: cannot be created
    with caplog.at_level(logging.WARNING):
        lib, how = kernels._build()
    assert lib is not None and how == "built for this process only (the cache is not writable)"
    (warning,) = caplog.records
    assert warning.getMessage().startswith(f"{blocker / 'cache' / 'kernels'}/recurrence-")
    assert "cannot write it" in warning.getMessage()
    monkeypatch.setattr(kernels, "library", lambda: lib)  # its file is gone; the loaded library computes
    test_cell_forward_and_backward_equal_torchs(torch.float32, 4, 300, True, True)


def test_a_wrong_layout_is_refused_even_without_asserts():
    """The kernels read raw pointers: a transposed operand must be an error under `python -O` too."""
    if kernels.library() is None:
        pytest.skip("no kernels on this machine")
    hidden = 8
    act = torch.rand(4, 4 * hidden)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.cell_backward(torch.randn(hidden, 4).t(), torch.randn(4, hidden), act, torch.rand(4, hidden),
                              torch.randn(4, hidden), torch.empty(4, 4 * hidden))
    code = ("import torch; from nmt.model import kernels; t = torch.randn(8, 4).t()\n"
            "try:\n    kernels._rows(t)\nexcept ValueError: print('refused')")
    done = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "refused", done.stderr
