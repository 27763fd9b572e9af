"""Train the tutorial's MNIST classifier with fastnn's kernels, native PyTorch, or both.

    python -m fastnn.train                                  # both impls, MNIST, 5 epochs
    python -m fastnn.train --impl fastnn --dataset fashion-mnist --dropout 0.2
    python -m fastnn.train --device cuda --cuda-graph --loss ce --save mnist.pt --plot curves.png

Model 784-256-128-64-10 with ReLU, log_softmax + NLLLoss (``--loss ce``: fused
cross-entropy on the logits), Adam lr 0.003, batch 64. The dataset sits on the device
as one tensor; batches are gathered by index from a seeded permutation per epoch.

With ``--impl both`` native runs first, then fastnn, from identical initial weights
(the native model's state_dict is copied into the fastnn one), the same batch order and
the same dropout masks (the RNG is re-seeded before each run); a side-by-side table
closes the run. Epoch times cover the training pass only (CUDA synchronised before
each clock read); the first epoch includes warm-up (CUDA-graph capture, allocator).

``--cuda-graph`` (CUDA only) captures one whole training step -- batch gather, forward,
loss, backward, Adam(capturable=True).step() -- into a CUDA graph and replays it for
every full batch. The first 3 full batches of epoch 1 run eagerly on a side stream as
warm-up (they are real training steps), the 4th is captured and replayed. The final
short batch of an epoch (60000 % 64 = 32 samples) runs EAGERLY, accumulating into the
graph's gradient buffers (zero_grad(set_to_none=False)), so no second graph is needed.
"""
import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import Tensor

from .data import DATASETS, Data, DataError, epoch_batches, load_dataset
from .models import Classifier, save_checkpoint

ARCH = dict(input_size=784, hidden_sizes=(256, 128, 64), output_size=10)
GRAPH_WARMUP_STEPS = 3


# ----------------------------------------------------------------------------- results

@dataclass
class EpochStats:
    epoch: int
    train_loss: float      # mean loss over the epoch's training samples
    test_loss: float       # mean NLL over the test set (eval mode)
    test_accuracy: float   # top-1, percent
    time_s: float          # wall time of the training pass
    samples_per_s: float   # training samples / time_s


@dataclass
class RunResult:
    impl: str
    model: Classifier
    n_train: int
    history: List[EpochStats] = field(default_factory=list)

    def steady_time(self) -> float:
        """Mean epoch time, leaving out epoch 1 (warm-up) when there are several."""
        times = [e.time_s for e in self.history]
        return sum(times[1:]) / (len(times) - 1) if len(times) > 1 else times[0]


# ----------------------------------------------------------------------------- helpers

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device) -> float:
    _sync(device)
    return time.perf_counter()


def _impl_nn(impl: str):
    if impl == "fastnn":
        from fastnn import nn
        return nn
    return torch.nn


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False, unit="batch", dynamic_ncols=True)


class Trainer:
    """One model, its loss and its optimizer, stepping over a :class:`Data` on one device.

    ``step_fn(idx)`` for an index tensor (B,) runs gather -> forward -> loss -> backward ->
    Adam step and adds loss * B into ``self.loss_sum`` (a device tensor, so no host sync).
    """

    def __init__(self, model: Classifier, data: Data, impl: str, loss: str, lr: float,
                 batch_size: int, cuda_graph: bool, bf16: bool = False):
        self.model, self.data, self.impl = model, data, impl
        self.device = data.train_x.device
        # mixed precision: forward and loss under autocast (the parameters stay float32)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)
        nn = _impl_nn(impl)
        self.use_logits = loss == "ce"
        self.criterion = nn.CrossEntropyLoss() if self.use_logits else nn.NLLLoss()
        self.eval_criterion = nn.NLLLoss(reduction="sum")
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, capturable=cuda_graph)
        self.batch_size = batch_size
        self.cuda_graph = cuda_graph
        self.loss_sum = torch.zeros((), device=self.device)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static_idx: Optional[Tensor] = None
        self.warmup_left = GRAPH_WARMUP_STEPS
        self.side_stream = torch.cuda.Stream(self.device) if cuda_graph else None

    def _step(self, idx: Tensor, set_to_none: bool) -> None:
        x = self.data.train_x.index_select(0, idx)
        y = self.data.train_y.index_select(0, idx)
        with self.autocast:
            out = self.model.logits(x) if self.use_logits else self.model(x)
            loss = self.criterion(out, y)
        self.optimizer.zero_grad(set_to_none=set_to_none)
        loss.backward()
        self.optimizer.step()
        self.loss_sum.add_(loss.detach() * idx.shape[0])

    def step(self, idx: Tensor) -> None:
        if not self.cuda_graph:
            return self._step(idx, set_to_none=True)
        if idx.shape[0] != self.batch_size:  # the short last batch: eager, into the graph's grads
            return self._step(idx, set_to_none=self.graph is None)
        if self.graph is not None:
            self.static_idx.copy_(idx)
            self.graph.replay()
            return
        if self.warmup_left > 0:  # real steps, on a side stream as capture requires
            self.side_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.side_stream):
                self._step(idx, set_to_none=True)
            torch.cuda.current_stream(self.device).wait_stream(self.side_stream)
            self.warmup_left -= 1
            return
        # Capture this step, then replay it: capture records kernels without running them.
        self.static_idx = idx.clone()
        self.optimizer.zero_grad(set_to_none=True)  # grads get allocated in the graph's pool
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step(self.static_idx, set_to_none=False)
        self.graph.replay()

    def train_epoch(self, generator: torch.Generator, desc: str, progress: bool) -> float:
        """One pass over the training set; returns the mean training loss."""
        self.model.train()
        self.loss_sum.zero_()
        n = self.data.train_x.shape[0]
        batches = epoch_batches(n, self.batch_size, generator, self.device)
        for idx in _progress(batches, math.ceil(n / self.batch_size), desc, progress):
            self.step(idx)
        return self.loss_sum.item() / max(n, 1)

    @torch.no_grad()
    def evaluate(self, chunk: int = 1000):
        """(mean test NLL, top-1 accuracy in percent) in eval mode."""
        self.model.eval()
        x_all, y_all = self.data.test_x, self.data.test_y
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for start in range(0, x_all.shape[0], chunk):
            x, y = x_all[start:start + chunk], y_all[start:start + chunk]
            with self.autocast:
                log_probs = self.model(x)
                loss_sum += self.eval_criterion(log_probs, y)
            top_class = log_probs.topk(1, dim=1).indices.squeeze(1)
            correct += (top_class == y).sum()
        self.model.train()
        n = max(x_all.shape[0], 1)
        return loss_sum.item() / n, 100.0 * correct.item() / n


def train(model: Classifier, data: Data, impl: str, args) -> RunResult:
    """Train ``model`` for args.epochs epochs, printing one line per epoch."""
    torch.manual_seed(args.seed + 1)  # dropout masks: the same sequence for every impl
    generator = torch.Generator().manual_seed(args.seed)  # batch order
    trainer = Trainer(model, data, impl, args.loss, args.lr, args.batch_size, args.cuda_graph,
                      args.bf16)
    n = data.train_x.shape[0]
    result = RunResult(impl, model, n)
    for epoch in range(1, args.epochs + 1):
        t0 = _clock(trainer.device)
        train_loss = trainer.train_epoch(generator, f"[{impl}] epoch {epoch}/{args.epochs}",
                                         args.progress)
        elapsed = _clock(trainer.device) - t0
        test_loss, accuracy = trainer.evaluate()
        stats = EpochStats(epoch, train_loss, test_loss, accuracy, elapsed, n / elapsed)
        result.history.append(stats)
        print(f"[{impl:>6}] epoch {epoch}/{args.epochs}  train loss {train_loss:.4f}  "
              f"test loss {test_loss:.4f}  test acc {accuracy:6.2f}%  "
              f"time {elapsed:7.2f} s  {stats.samples_per_s:9.0f} samples/s", flush=True)
    return result


# ----------------------------------------------------------------------------- reporting

def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = cpu_name()
    return (f"device {device} ({where}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} CPU threads")


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def summary_table(results: List[RunResult]) -> str:
    """Side-by-side Markdown table; speed-up = native epoch time / this impl's epoch time."""
    base = next((r for r in results if r.impl == "native"), None)
    epochs = len(results[0].history)
    steady = "epochs 2+" if epochs > 1 else "epoch 1"
    rows = ["| impl | test acc | test loss | mean time/epoch (all) | "
            f"mean time/epoch ({steady}) | samples/s ({steady}) | speed-up vs native |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        last = r.history[-1]
        mean_all = sum(e.time_s for e in r.history) / len(r.history)
        speedup = f"{base.steady_time() / r.steady_time():.2f}x" if base else "-"
        rows.append(f"| {r.impl} | {last.test_accuracy:.2f}% | {last.test_loss:.4f} | "
                    f"{mean_all:.2f} s | {r.steady_time():.2f} s | {r.n_train / r.steady_time():.0f} | "
                    f"{speedup} |")
    return "\n".join(rows)


def plot_curves(results: List[RunResult], path: str, title: str) -> None:
    """Loss (train/test) and test accuracy per epoch, one line per impl, to a PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print(f"matplotlib is not installed: skipping --plot {path}", file=sys.stderr)
        return
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        ep = [e.epoch for e in r.history]
        ax_loss.plot(ep, [e.train_loss for e in r.history], "o-", label=f"{r.impl} train")
        ax_loss.plot(ep, [e.test_loss for e in r.history], "s--", label=f"{r.impl} test")
        ax_acc.plot(ep, [e.test_accuracy for e in r.history], "o-", label=r.impl)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"saved curves to {path}")


# ----------------------------------------------------------------------------- CLI

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fastnn.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    p.add_argument("--data", default=None,
                   help="dataset root in torchvision layout (default: $FASTNN_DATA, else "
                        "~/.cache/fastnn/data); may be read-only")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--impl", choices=("fastnn", "native", "both"), default="both")
    p.add_argument("--loss", choices=("nll", "ce"), default="nll",
                   help="nll: log_softmax + NLLLoss; ce: fused cross-entropy on the logits")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout after each hidden ReLU (the tutorial's validation chapter uses 0.2)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture the whole training step in a CUDA graph (CUDA only)")
    p.add_argument("--bf16", action="store_true",
                   help="mixed precision: forward and loss under torch.autocast with bfloat16 "
                        "(the parameters and the optimizer stay float32)")
    p.add_argument("--save", metavar="PATH", default=None,
                   help="save a checkpoint (of the fastnn model when --impl both)")
    p.add_argument("--plot", metavar="PATH.png", default=None, help="loss/accuracy curves")
    p.add_argument("--limit-train", type=int, default=None, metavar="N",
                   help="use only the first N training samples")
    p.add_argument("--limit-test", type=int, default=None, metavar="N",
                   help="use only the first N test samples")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no tqdm progress bars (they are on by default)")
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.cuda_graph and args.device != "cuda":
        p.error("--cuda-graph needs --device cuda")
    if args.cuda_graph and args.bf16:
        p.error("--bf16 runs eagerly: leave out --cuda-graph")
    for name in ("epochs", "batch_size", "limit_train", "limit_test", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    return args


def main(argv=None) -> Dict[str, RunResult]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    impls = ["native", "fastnn"] if args.impl == "both" else [args.impl]
    if "fastnn" in impls and device.type == "cuda":
        import fastnn
        if not fastnn.WITH_CUDA:
            sys.exit("fastnn was built without CUDA kernels: rebuild it with FASTNN_CUDA=1, "
                     "or use --impl native / --device cpu")

    try:
        data = load_dataset(args.dataset, args.data, device, args.limit_train, args.limit_test)
    except DataError as e:
        sys.exit(f"error: {e}")
    print(f"{args.dataset}: {data.train_x.shape[0]} train / {data.test_x.shape[0]} test samples "
          f"from {data.root}")
    print(f"measured on {machine_line(device)}; batch {args.batch_size}, lr {args.lr}, "
          f"loss {args.loss}, dropout {args.dropout}, seed {args.seed}"
          + (", CUDA graph (short last batch eager)" if args.cuda_graph else "")
          + (", autocast bfloat16" if args.bf16 else ""), flush=True)

    torch.manual_seed(args.seed)
    reference = Classifier(**ARCH, dropout=args.dropout, impl=impls[0]).to(device)
    initial_state = {k: v.clone() for k, v in reference.state_dict().items()}
    results = []
    for impl in impls:
        model = reference if impl == impls[0] else \
            Classifier(**ARCH, dropout=args.dropout, impl=impl).to(device)
        model.load_state_dict(initial_state)
        results.append(train(model, data, impl, args))

    if len(results) > 1:
        print()
        print(summary_table(results))
        native, fast = results[0].history[-1], results[1].history[-1]
        print(f"\nfastnn - native test accuracy: {fast.test_accuracy - native.test_accuracy:+.2f} "
              f"points (same initial weights and batch order)")
    if args.save:
        save_checkpoint(args.save, results[-1].model)
        print(f"saved {results[-1].impl} checkpoint to {args.save}")
    if args.plot:
        plot_curves(results, args.plot, f"{args.dataset}, batch {args.batch_size}, "
                                        f"lr {args.lr}, {device.type}")
    return {r.impl: r for r in results}


if __name__ == "__main__":
    main()
