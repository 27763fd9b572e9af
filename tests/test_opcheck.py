"""torch.library.opcheck for every registered fastnn op, with a few sample inputs each.

opcheck runs the op for real and checks: the schema (mutation / aliasing annotations),
the autograd registration, the fake (meta) kernel against the real outputs (shapes,
strides, dtypes: every output must be dense) and AOT dispatch with dynamic shapes."""
import pytest
import torch

import fastnn  # noqa: F401  (loads the ops)
from support import randn

ops = torch.ops.fastnn
NONE, MEAN, SUM = 0, 1, 2

ALL_OPS = ["linear_forward", "linear_backward", "relu_forward", "relu_forward_", "relu_backward",
           "log_softmax_forward", "log_softmax_backward", "nll_loss_forward", "nll_loss_backward",
           "cross_entropy_forward", "cross_entropy_backward"]


def rg(t):
    return t.requires_grad_()


def samples(name, device):
    """(args) tuples for op `name` on `device` (float32 and float64, dense and strided).

    The differentiable tensors require grad, so opcheck also backpropagates through every op,
    the backward ops included (they are differentiable again: double backward)."""
    out = []
    for dtype in (torch.float32, torch.float64):
        r = lambda *s, scale=1.0: randn(*s, dtype=dtype, device=device, scale=scale)  # noqa: E731
        if name == "linear_forward":
            out += [(rg(r(5, 7)), rg(r(3, 7)), rg(r(3))),
                    (rg(r(2, 4, 7)), rg(r(3, 7)), None),
                    (rg(r(7)), rg(r(3, 7)), rg(r(3))),
                    (rg(r(7, 5).t()), rg(r(7, 3).t()), rg(r(6)[::2])),
                    (rg(r(0, 7)), rg(r(3, 7)), rg(r(3)))]
        elif name == "linear_backward":
            for mask in ([True, True, True], [True, False, False], [False, True, False],
                         [False, False, True], [False, True, True], [True, True, False]):
                out.append((rg(r(5, 3)), rg(r(5, 7)), rg(r(3, 7)), mask))
            out += [(rg(r(2, 4, 3)), rg(r(2, 4, 7)), rg(r(3, 7)), [True, True, True]),
                    (rg(r(3, 5).t()), rg(r(7, 5).t()), rg(r(7, 3).t()), [True, True, True]),
                    (r(0, 3), r(0, 7), r(3, 7), [True, True, True])]
        elif name == "relu_forward":
            out += [(rg(r(4, 9)),), (rg(r(9, 4).t()),), (rg(r(0, 3)),), (rg(r(100)),),
                    (rg(r(8, 6)[:, ::2]),),
                    (rg(r(2, 3, 4, 5).to(memory_format=torch.channels_last)),)]
        elif name == "relu_forward_":
            out += [(rg(r(4, 9)) * 1,), (rg(r(9, 4)).t() * 1,), (r(33),), (r(8, 6)[:, ::2],)]
        elif name == "relu_backward":
            y = torch.relu(r(4, 9))
            y_t = torch.relu(r(9, 4).t())
            out += [(rg(r(4, 9)), y), (rg(r(9, 4).t()), y), (r(0, 2), r(0, 2).relu()),
                    (r(4, 9), rg(y_t)), (rg(r(9, 4).t()), y_t)]
        elif name == "log_softmax_forward":
            out += [(rg(r(4, 9)), 1), (rg(r(4, 9)), 0), (rg(r(2, 3, 4)), -1), (rg(r(2, 3, 4)), 1),
                    (rg(r(9, 4).t()), 1), (rg(r(5)), 0), (rg(r(0, 4)), 1)]
        elif name == "log_softmax_backward":
            for shape, dim in (((4, 9), 1), ((4, 9), 0), ((2, 3, 4), 1), ((5,), -1)):
                y = torch.log_softmax(r(*shape), dim)
                out.append((rg(r(*shape)), rg(y), dim))
        elif name in ("nll_loss_forward", "cross_entropy_forward", "nll_loss_backward",
                      "cross_entropy_backward"):
            cases = [((6, 5), None, MEAN, -100), ((6, 5), r(5).abs() + 0.5, MEAN, 2),
                     ((6, 5), r(5).abs() + 0.5, NONE, 1), ((6, 5), None, SUM, -100),
                     ((5,), None, MEAN, -100), ((3, 5, 4), r(5).abs() + 0.5, MEAN, 0),
                     ((2, 5, 3, 2), None, NONE, -100), ((0, 5), None, SUM, -100)]
            # cross-entropy: also with label smoothing (the schema's trailing float)
            smoothing = [()] if name.startswith("nll") else [(), (0.25,)]
            for (shape, w, red, ii), ls in ((c, ls) for c in cases for ls in smoothing):
                C = shape[0] if len(shape) == 1 else shape[1]
                tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
                t = torch.randint(0, C, tshape, device=device)
                x = r(*shape)
                fwd = getattr(ops, name.replace("backward", "forward"))
                res = fwd(x, t, w, red, ii, *ls)
                if name.endswith("forward"):
                    out.append((rg(x), t, w, red, ii, *ls))
                    continue
                g = r(*res[0].shape)
                g, x = (rg(g), rg(x)) if x.numel() else (g, x)
                if name == "nll_loss_backward":
                    out.append((g, x, t, w, red, ii, res[1]))
                else:
                    out.append((g, x, t, w, red, ii, res[1], res[2], *ls))
        else:
            raise AssertionError(name)
    return out


@pytest.mark.parametrize("name", ALL_OPS)
def test_opcheck(device, name):
    op = getattr(ops, name).default
    for args in samples(name, device):
        torch.library.opcheck(op, args)


def test_every_op_is_covered():
    """Every schema in the fastnn namespace has samples here."""
    registered = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
                  if n.startswith("fastnn::")}
    assert registered == set(ALL_OPS)
