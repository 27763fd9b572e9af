"""Whole-training-step benchmark of the seed MLP (784-256-128-64-10, log_softmax + NLLLoss,
Adam lr 0.003): forward, loss, backward, optimizer step, on one fixed random batch.

Variants (each its own model and optimizer, from the same initial weights; timed
interleaved, see common.measure):

    native eager          torch.nn layers, Adam (default foreach implementation)
    native compile        torch.compile of forward+loss (backward via AOTAutograd) and of
                          Adam.step, default mode (CUDA always; CPU only with --compile-cpu,
                          as inductor's C++ compile is slow on small machines)
    native CUDA graph     the whole step captured once, replayed (Adam(capturable=True))
    fastnn eager          fastnn.nn layers, same Adam
    fastnn CUDA graph     as native CUDA graph
    native / fastnn autocast   eager, forward and loss under torch.autocast with the
                          device's default dtype (bfloat16 on the CPU, float16 on CUDA)

Batch sizes 64 (MNIST training), 1024 and 8192. Reported: time per step and its ratio to
native eager at the same batch size.
"""
from typing import Callable, Dict, List

import torch

from .common import Budget, measure, random_generator


def _model(impl: str, device, init_state):
    from fastnn.models import Classifier
    model = Classifier(impl=impl).to(device)
    model.load_state_dict(init_state)
    return model


def _criterion(impl: str):
    if impl == "fastnn":
        from fastnn import nn
        return nn.NLLLoss()
    return torch.nn.NLLLoss()


def eager_step(impl: str, device, init_state, x, y, autocast: bool = False) -> Callable[[], None]:
    model, loss_fn = _model(impl, device, init_state), _criterion(impl)
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    amp = torch.autocast(torch.device(device).type, enabled=autocast)

    def step():
        with amp:
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def compiled_step(impl: str, device, init_state, x, y) -> Callable[[], None]:
    model, loss_fn = _model(impl, device, init_state), _criterion(impl)
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    fwd = torch.compile(lambda a, b: loss_fn(model(a), b))
    opt_step = torch.compile(opt.step)

    def step():
        loss = fwd(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt_step()
    return step


def graph_step(impl: str, device, init_state, x, y) -> Callable[[], None]:
    """Capture forward, loss, backward and Adam(capturable=True).step() in one CUDA graph."""
    model, loss_fn = _model(impl, device, init_state), _criterion(impl)
    opt = torch.optim.Adam(model.parameters(), lr=0.003, capturable=True)

    def body():
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    opt.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()

    # A graph holds raw addresses, not references: the parameters, gradients, optimizer
    # state and batch it reads and writes must outlive it. `step` keeps them (returning
    # bare graph.replay let them be freed, so replays touched memory the allocator had
    # handed to other variants: an illegal access at batch 8192 when variants interleave).
    def step():
        graph.replay()
    step.keepalive = (model, opt, x, y)
    return step


def variants(device: str, compile_cpu: bool) -> Dict[str, Callable]:
    out = {"native eager": lambda *a: eager_step("native", *a)}
    if device == "cuda" or compile_cpu:
        out["native compile"] = lambda *a: compiled_step("native", *a)
    if device == "cuda":
        out["native CUDA graph"] = lambda *a: graph_step("native", *a)
    out["fastnn eager"] = lambda *a: eager_step("fastnn", *a)
    if device == "cuda":
        out["fastnn CUDA graph"] = lambda *a: graph_step("fastnn", *a)
    out["native autocast"] = lambda *a: eager_step("native", *a, autocast=True)
    out["fastnn autocast"] = lambda *a: eager_step("fastnn", *a, autocast=True)
    return out


def run(device: str = "cpu", quick: bool = False, budget: Budget = None, compile_cpu: bool = False,
        log=print) -> Dict:
    """Time one training step per variant and batch size; returns {"rows": [...]}."""
    from fastnn.models import Classifier
    from .common import FULL, QUICK
    budget = budget or (QUICK if quick else FULL)
    batches: List[int] = [64] if quick else [64, 1024, 8192]
    torch.manual_seed(0)
    init_state = Classifier(impl="native").to(device).state_dict()
    g = random_generator(device)
    rows = []
    for batch in batches:
        x = torch.randn(batch, 784, device=device, generator=g)
        y = torch.randint(0, 10, (batch,), device=device, generator=g)
        candidates, errors = {}, {}
        for name, build in variants(device, compile_cpu and not quick).items():
            try:
                step = build(device, init_state, x, y)
                step()  # compile / first run outside the timing loop
                candidates[name] = [step]
            except Exception as e:
                errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        stats = measure(candidates, device, budget) if candidates else {}
        base = stats.get("native eager")
        for name in list(candidates) + list(errors):
            row = {"batch": batch, "variant": name}
            if name in stats:
                st = stats[name]
                row.update(st.as_dict(), samples_per_s=batch / st.median_s,
                           ratio_to_native_eager=(st.median_s / base.median_s) if base else None)
            else:
                row["error"] = errors[name]
            rows.append(row)
            log(f"step batch {batch:5d} {name:>18}: " + (
                f"{row['median_s'] * 1e6:10.1f} us/step  x{row['ratio_to_native_eager']:.2f} of native eager"
                if "median_s" in row and row["ratio_to_native_eager"] is not None
                else row.get("error", f"{row.get('median_s', 0) * 1e6:.1f} us")))
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows}
