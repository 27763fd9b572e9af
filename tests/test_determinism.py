"""Bitwise determinism on CPU: the same inputs give identical outputs run to run and
with 1 vs 2 threads (fastnn splits reductions into thread-count-independent chunks).
The thread count is restored by conftest's autouse fixture."""
import pytest
import torch

import fastnn.functional as FF
from support import init_weight, randn

pytestmark = pytest.mark.dtypes(torch.float32, torch.float64)
THREADS = (2, 1, 2)  # 2 first and last: run-to-run with the same count, and across counts


def _linear_all(x, w, b, g):
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    y = FF.linear(xs, ws, bs)
    y.backward(g)
    return [y.detach(), xs.grad, ws.grad, bs.grad]


def _assert_bitwise_across_threads(fn, *args):
    results = []
    for n in THREADS:
        torch.set_num_threads(n)
        results.append(fn(*args))
    for other, n in zip(results[1:], THREADS[1:]):
        for i, (a, b) in enumerate(zip(results[0], other)):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a, b) or (torch.isnan(a).any() and torch.equal(a.nan_to_num(), b.nan_to_num())), \
                f"output {i} differs with {n} thread(s) vs {THREADS[0]}: max diff {(a - b).abs().max()}"


@pytest.mark.parametrize("batch,fin,fout", [(512, 784, 256), (1000, 65, 10), (7, 1000, 513),
                                            (4096, 16, 16)])
def test_linear_deterministic(dtype, batch, fin, fout):
    x = randn(batch, fin, dtype=dtype)
    w = init_weight(fout, fin, dtype=dtype)
    b = randn(fout, dtype=dtype)
    g = randn(batch, fout, dtype=dtype)
    _assert_bitwise_across_threads(_linear_all, x, w, b, g)


def _loss_all(name, x, t, w, reduction, ignore_index):
    xs = x.clone().requires_grad_()
    fn = getattr(FF, name)
    loss = fn(xs, t, w, reduction=reduction, ignore_index=ignore_index)
    loss.backward(torch.ones_like(loss) * 0.5)
    return [loss.detach(), xs.grad]


@pytest.mark.parametrize("name", ["nll_loss", "cross_entropy"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(20000, 10), (64, 1000), (8, 10, 32, 32)], ids=str)
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
def test_loss_deterministic(dtype, name, reduction, shape, weighted):
    C = shape[1]
    x = randn(*shape, dtype=dtype, scale=3)
    t = torch.randint(0, C, (shape[0],) + shape[2:])
    t.view(-1)[::7] = 1  # some ignored
    w = torch.rand(C, dtype=dtype) + 0.5 if weighted else None
    _assert_bitwise_across_threads(_loss_all, name, x, t, w, reduction, 1)


@pytest.mark.parametrize("shape,dim", [((4096, 100), 1), ((100, 4096), 0), ((8, 64, 33, 17), 1)],
                         ids=str)
def test_log_softmax_and_relu_deterministic(dtype, shape, dim):
    x = randn(*shape, dtype=dtype, scale=3)
    g = randn(*shape, dtype=dtype)

    def run():
        xs = x.clone().requires_grad_()
        y = FF.log_softmax(FF.relu(xs), dim)
        y.backward(g)
        return [y.detach(), xs.grad]

    _assert_bitwise_across_threads(run)


def test_mlp_training_steps_deterministic():
    """Three Adam steps of the seed MLP (fastnn layers) give bitwise identical weights
    with 2, 1 and 2 threads."""
    import copy

    import fastnn
    from support import seed_mlp, synthetic_mnist
    torch.manual_seed(0)
    base = fastnn.convert(seed_mlp(torch.nn))
    x, t = synthetic_mnist(128)

    def train():
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for i in range(3):
            opt.zero_grad()
            FF.nll_loss(model(x[i * 32:(i + 1) * 32]), t[i * 32:(i + 1) * 32]).backward()
            opt.step()
        return [p.detach() for p in model.parameters()]

    _assert_bitwise_across_threads(train)
