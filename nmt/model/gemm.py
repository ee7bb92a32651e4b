"""Matrix products on the CPU: PyTorch's default BLAS or oneDNN, whichever this machine runs faster.

`torch.mm` hands float32 CPU products to MKL, oneDNN's inner-product primitive to its own kernels; which is faster
depends on the CPU (MKL does not use AVX-512 on AMD CPUs, oneDNN does; with AVX2 alone they are close), so it is
measured, not assumed. `routes()` decides once per machine and torch version by timing the model's kinds of products
both ways (a few seconds), and caches the choice in `$NMT_CACHE`, so that every later run on the machine takes the same
paths and computes the same numbers, which exact resume relies on. `NMT_CPU_PRODUCTS=onednn` or `torch` overrides it.
The libraries' strengths differ by shape, so each kind is chosen apart: one time step's rows inside a recurrence
(`step`: few rows, thousands of calls), forward products over whole batches (`bulk`: the output projection, whose odd
vocabulary-sized width MKL handles badly), their gradient products (`gradients`: transposed views, which MKL takes
well), and whether weights used many times are pre-laid-out in oneDNN's blocked format, skipping a reorder per call and
fusing the bias: the training recurrence's (`step_prepacked`) and search's (`prepacked`), each timed at its rows.

`product` is `F.linear` with that routing; `linear` adds a backward pass whose two products take the gradients' route.
Elsewhere (GPU, float64, autocast, a torch without oneDNN) both are `F.linear`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from nmt.cache import cache_root, read_json, set_aside, unwritable, written_whole
from nmt.device import cpu_capability, cpu_name

log = logging.getLogger(__name__)

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
ONEDNN_BF16 = ONEDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported()
#: oneDNN must win by this factor to replace the default path: a near tie is not worth a second code path
MARGIN = 0.9


@dataclass
class Routes:
    step: str  # float32 products of one step's rows in a recurrence: "onednn" or "torch"
    bulk: str  # float32 forward products over whole batches
    prepacked: bool  # search's float32 weights in oneDNN's layout
    source: str  # "measured", "cached", "NMT_CPU_PRODUCTS" or "no oneDNN"
    milliseconds: dict = field(default_factory=dict)  # the timings the choice came from
    step_prepacked: bool = False  # the training recurrence's float32 weights in oneDNN's layout
    gradients: str = ""  # float32 gradient products over whole batches; "" = as `bulk`

    def __post_init__(self):
        self.gradients = self.gradients or self.bulk

    def describe(self) -> str:
        step = "prepacked oneDNN" if self.step_prepacked else self.step
        packed = "prepacked oneDNN" if self.prepacked else f"plain ({self.step})"
        return (f"float32 products: {step} per step, {self.bulk} over whole batches, {self.gradients} for their"
                f" gradients; search weights {packed} ({self.source})")


_routes: Routes | None = None


def routes() -> Routes:
    """This machine's product routes: decided once per process (by the trainer before its clock starts, else at
    the first float32 CPU product), then fixed."""
    global _routes
    if _routes is None:
        _routes = _decide()
        log.info("%s", _routes.describe())
    return _routes


def _machine_key() -> str:
    # the version at the end: an entry measured by an earlier version is measured again (v1: round vocabulary
    # size; v2: no prepacked step weights; v3: one route for forward and gradient products; v4: routes timed apart)
    return (f"{cpu_name()} | {cpu_capability()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
            " | v5")


def _decide() -> Routes:
    forced = os.environ.get("NMT_CPU_PRODUCTS", "auto")
    if not ONEDNN:
        return Routes("torch", "torch", False, "no oneDNN")
    if forced in ("onednn", "torch"):
        return Routes(forced, forced, forced == "onednn", "NMT_CPU_PRODUCTS", step_prepacked=forced == "onednn")
    if forced != "auto":
        log.warning("NMT_CPU_PRODUCTS=%s is not one of auto, onednn, torch; measuring instead", forced)
    key, path = _machine_key(), cache_root() / "cpu_products.json"
    entries = read_json(path, _cache_problem, "measuring the product routes", "measuring the routes again") or {}
    if key in entries:
        cached = entries[key]
        problem = _entry_problem(cached)
        if problem is None:
            return Routes(cached["step"], cached["bulk"], cached["prepacked"], "cached", cached["milliseconds"],
                          cached["step_prepacked"], cached["gradients"])
        set_aside(path, f"the entry for this machine {problem}", "measuring the routes again")
        del entries[key]
    decided = measure_routes()
    entries[key] = {k: v for k, v in asdict(decided).items() if k != "source"}
    try:  # so that every later run takes these routes, and computes the same numbers
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_whole(path) as partial:
            partial.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    except OSError as error:
        unwritable(path, error, "this process keeps the routes it measured, and the next one measures again")
    return decided


def _cache_problem(entries) -> str | None:
    """What is wrong with the cache file's content (an object of entries, one per machine key), or None."""
    whole = isinstance(entries, dict) and all(isinstance(entry, dict) for entry in entries.values())
    return None if whole else "not a JSON object of entries per machine"


def _entry_problem(entry: dict) -> str | None:
    """What is wrong with a cached entry (as `Routes` less its source), or None."""
    for name in ("step", "bulk", "gradients"):
        if entry.get(name) not in ("onednn", "torch"):
            return f"has {name}={json.dumps(entry.get(name))}, not \"onednn\" or \"torch\""
    for name in ("prepacked", "step_prepacked"):
        if not isinstance(entry.get(name), bool):
            return f"has {name}={json.dumps(entry.get(name))}, not true or false"
    timings = entry.get("milliseconds")
    if not (isinstance(timings, dict) and all(isinstance(v, (int, float)) for v in timings.values())):
        return "has milliseconds that are not an object of timings"
    return None


def _best_seconds(run, repeats: int, rounds: int = 3) -> float:
    """The fastest of `rounds` timings of `repeats` calls: the least disturbed by anything else running."""
    run()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            run()
        best = min(best, (time.perf_counter() - started) / repeats)
    return best


def _faster(products: list[tuple[torch.Tensor, torch.Tensor]], repeats: int, seconds: dict, name: str) -> str:
    """"onednn" where it runs `products` (x, weight) in MARGIN of torch's time or less, else "torch". The routes
    take turns, round by round, each product's best round counting: a cold start or a busy moment then slows
    both alike instead of deciding, once and for all later runs, against the one timed first. (The first
    process on a fresh machine has timed oneDNN's gradient products 1.7 times slower than later ones did.)"""
    candidates = {"torch": F.linear, "onednn": _onednn_product}
    for run in candidates.values():
        for x, w in products:
            run(x, w)
    best = {route: [float("inf")] * len(products) for route in candidates}
    for _ in range(3):
        for route, run in candidates.items():
            for k, (x, w) in enumerate(products):
                best[route][k] = min(best[route][k], _best_seconds(lambda x=x, w=w, run=run: run(x, w), repeats, 1))
    seconds.update({f"{name}_{route}": sum(best[route]) for route in candidates})
    return "onednn" if seconds[f"{name}_onednn"] < MARGIN * seconds[f"{name}_torch"] else "torch"


def measure_routes() -> Routes:
    """Time the model's kinds of float32 products both ways, about three seconds in all: a decoder step's
    products (then with prepacked weights), those over a batch, their gradients, and search's step products."""
    rand = functools.partial(torch.randn, generator=torch.Generator().manual_seed(0))
    step = [(rand(64, 1024), rand(2048, 1024)), (rand(64, 2048), rand(2048, 1024).t()),
            (rand(64, 1024), rand(512, 1024))]
    rows = rand(512, 512)
    # the output projection (512 rows, a vocabulary of 5,483: see search below) and the decoder's embedding gates
    bulk = [(rows, rand(5483, 512)), (rand(512, 256), rand(2048, 256))]
    # the projection's input and weight gradients, and a recurrent weight's gradient over all positions:
    # (4H, positions) @ (positions, in)
    gradients = [(rand(512, 5483), rand(5483, 512).t()), (rand(512, 5483).t(), rows.t()),
                 (rand(512, 2048).t(), rand(512, 1024).t())]
    seconds: dict = {}
    step_route = _faster(step, 10, seconds, "step")
    # the training recurrence's forward products use each weight at every position of a batch
    forward = [step[0], step[2]]
    step_plain = F.linear if step_route == "torch" else _onednn_product
    seconds["step_forward"] = sum(_best_seconds(lambda x=x, w=w: step_plain(x, w), 10) for x, w in forward)
    seconds["step_prepacked"] = sum(_best_seconds(lambda x=x, w=w: _onednn_product(x, w), 10)
                                    for x, w in ((x, torch.ops.mkldnn._reorder_linear_weight(w)) for x, w in forward))
    step_prepacked = seconds["step_prepacked"] < MARGIN * seconds["step_forward"]
    bulk_route = _faster(bulk, 2, seconds, "bulk")
    gradients_route = _faster(gradients, 2, seconds, "gradients")
    # search's products: a layer's gates and the output projection, at the rows of a few sentences' beams
    # (serving) and of a full batch. The vocabulary is not a round number, as a trained one's seldom is: MKL
    # can be far slower at such sizes than at round ones, which would hide that from the measurement.
    weights = [(w, torch.ops.mkldnn._reorder_linear_weight(w)) for w in (rand(2048, 1024), rand(5483, 512))]
    search = [(rand(n, w.size(1)), w, packed) for n in (160, 640) for w, packed in weights]
    seconds["search_plain"] = sum(_best_seconds(lambda x=x, w=w: step_plain(x, w), 3) for x, w, _ in search)
    seconds["search_prepacked"] = sum(_best_seconds(lambda x=x, w=w: _onednn_product(x, w), 3) for x, _, w in search)
    prepacked = seconds["search_prepacked"] < MARGIN * seconds["search_plain"]
    return Routes(step_route, bulk_route, prepacked, "measured", {k: round(v * 1e3, 3) for k, v in seconds.items()},
                  step_prepacked, gradients_route)


def _onednn(x: torch.Tensor, weight: torch.Tensor, step: bool = False, gradient: bool = False) -> bool:
    if not (ONEDNN and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.size(-1) > 0
            and not torch.is_autocast_enabled("cpu")):
        return False
    chosen = routes()
    return (chosen.step if step else chosen.gradients if gradient else chosen.bulk) == "onednn"


def _dense(matrix: torch.Tensor) -> torch.Tensor:
    """`matrix` with its rows or its columns contiguous: other layouts (a column slice of a weight) send
    oneDNN to its reference kernel, hundreds of times slower."""
    return matrix if matrix.is_contiguous() or matrix.t().is_contiguous() else matrix.contiguous()


# search's row counts are padded up to a multiple of this (see `product`)
ROW_BUCKET = 16


def _onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    varying_rows: bool = False) -> torch.Tensor:
    rows = _dense(x.reshape(-1, x.size(-1)))  # a 3-D input, too, gets the reference kernel
    weight = weight if weight.is_mkldnn else _dense(weight)
    count = rows.size(0)
    padded = -(-count // ROW_BUCKET) * ROW_BUCKET if varying_rows else count
    if padded != count:
        rows = torch.cat([rows, rows.new_zeros(padded - count, rows.size(1))])
    out = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")
    return out[:count].view(*x.shape[:-1], weight.size(0))


def prepacked(weight: torch.Tensor, *, step: bool = False) -> torch.Tensor:
    """`weight` (N, K) in oneDNN's blocked layout: search's, or with `step` the training recurrence's. Prepacked for
    bf16 where oneDNN computes bf16, for float32 where that route was chosen; else unchanged. `product` then skips a
    reorder per call and adds the bias inside the product (addmm first copies it into every output row). Laid out
    from a contiguous copy: from a transposed view it takes several times as long."""
    if ONEDNN and weight.device.type == "cpu" and (
            (weight.dtype == torch.float32 and (routes().step_prepacked if step else routes().prepacked))
            or (weight.dtype == torch.bfloat16 and ONEDNN_BF16)):
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())
    return weight


def product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
            step: bool = False, gradient: bool = False, varying_rows: bool = False) -> torch.Tensor:
    """x (..., K) @ weight (N, K)^T + bias, outside autograd; a transposed view costs nothing. `step`: one
    time step's rows inside a recurrence; `gradient`: a gradient over a whole batch; each routed by what is
    fastest for such products. `varying_rows`: the row count changes from call to call (search's live
    hypotheses, one fewer each time one finishes): oneDNN builds and caches a primitive, JIT-compiled code
    included, for every row count it meets, which cost a long translation more time than the products and
    most of its memory; padded to a multiple of ROW_BUCKET, the rows meet a few dozen."""
    if weight.is_mkldnn or _onednn(x, weight, step, gradient):  # the first: from `prepacked`
        return _onednn_product(x, weight, bias, varying_rows)
    return F.linear(x, weight, bias)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return product(x, weight, bias)

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_rows = grad_out.reshape(-1, weight.size(0))  # (M, N)
        grad_x = product(grad_out, weight.t(), gradient=True) if ctx.needs_input_grad[0] else None
        grad_weight = (product(grad_rows.t(), x.reshape(-1, weight.size(1)).t(), gradient=True)
                       if ctx.needs_input_grad[1] else None)
        grad_bias = grad_rows.sum(0) if ctx.needs_input_grad[2] else None  # False for a bias of None
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` over whole batches, its float32 CPU forward and gradient products each on their own route."""
    if ((_onednn(x, weight) or _onednn(x, weight, gradient=True)) and torch.is_grad_enabled()
            and (x.requires_grad or weight.requires_grad)):
        return _Linear.apply(x, _dense(weight), bias)
    return product(x, weight, bias)  # F.linear, and autograd's own backward, wherever oneDNN is not used
