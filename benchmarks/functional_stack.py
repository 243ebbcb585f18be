"""DCGAN stacks: forward + backward of the generator and the discriminator for M members, three ways:

  (a) loop     M separate nets, one after another (what M separate runs compute)
  (b) vmap     ganexp.functional_stack.FunctionalStacked (torch.func.vmap over functional_call)
  (c) grouped  one conv with groups=M per layer, hand-written for DCGAN's layers (a comparison only)

on CPU with torch.set_num_threads(2), the nets built as ganexp builds them (model=dcgan, data=digits: 8x8x1;
data=mnist: 28x28x1; batch_size 64, latent_dim 100), in training mode (batch norm on batch statistics).

    python benchmarks/functional_stack.py                 # digits and mnist, M = 1 4 12
    python benchmarks/functional_stack.py --members 1 4 --data digits --budget 1.0

Prints a markdown table of ms per iteration (the median of the timed iterations after one warm-up) and the
speed-ups of (b) and (c) over (a); (b) and (c) are first checked against (a) (largest output difference).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ganexp.gan.stacked_nets import FunctionalStacked  # noqa: E402

SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}


def build_nets(data: str, members: int) -> tuple[list[nn.Module], list[nn.Module], dict]:
    """`members` generators and discriminators, built from the real config (conf/), seeds 0..M-1."""
    from ganexp.run.build import build_parts, plain
    from tests.helpers import make_cfg

    cfg = plain(make_cfg(Path(tempfile.gettempdir()) / "ganexp-bench", f"data={data}", "model=dcgan", "eval=none"))
    gens, discs = [], []
    for k in range(members):
        torch.manual_seed(k)
        parts = build_parts({key: cfg[key] for key in ("model", "data", "loss", "optimizer", "noise")})
        gens.append(parts["generator"])
        discs.append(parts["discriminator"])
    return gens, discs, {"batch": cfg["batch_size"], "latent": cfg["noise"]["latent_dim"]}


# ------------------------------------------------------------------------------------- (c) grouped convs
class Grouped:
    """The members' DCGAN nets as grouped convolutions: a conv phase in layout [N, M·C, H, W] (one conv with
    groups=M, batch norm over M·C channels), a Linear phase in [M, N, F] (one baddbmm). Uses a bound
    FunctionalStacked's leaves and buffers, walks the net's leaf modules in order (DCGAN's forward)."""

    def __init__(self, stack: FunctionalStacked):
        self.stack, self.m = stack, stack.members
        self.layers = [(name, mod) for name, mod in stack.nets[0].named_modules() if not list(mod.children())]

    def __call__(self, x: Tensor) -> Tensor:
        m, leaves, buffers = self.m, self.stack.leaves, self.stack.buffers
        grouped = x.dim() > 3  # images come in [M, N, C, H, W]
        if grouped:
            x = x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])
        for name, mod in self.layers:
            p = lambda attr: leaves.get(f"{name}.{attr}")  # noqa: E731
            if isinstance(mod, nn.Linear):
                if grouped:
                    raise RuntimeError("a Linear in the conv phase")
                w, b = p("weight"), p("bias")
                x = torch.bmm(x, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
            elif isinstance(mod, nn.Conv2d):
                w, b = p("weight"), p("bias")
                x = F.conv2d(x, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                             mod.stride, mod.padding, mod.dilation, groups=m)
            elif isinstance(mod, nn.ConvTranspose2d):
                w, b = p("weight"), p("bias")  # [M, Cin, Cout, k, k]
                x = F.conv_transpose2d(x, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                                       mod.stride, mod.padding, mod.output_padding, groups=m, dilation=mod.dilation)
            elif isinstance(mod, nn.BatchNorm2d):
                rm, rv = buffers[f"{name}.running_mean"], buffers[f"{name}.running_var"]
                x = F.batch_norm(x, rm.view(-1), rv.view(-1), p("weight").reshape(-1), p("bias").reshape(-1),
                                 mod.training, mod.momentum, mod.eps)
                if mod.training:
                    buffers[f"{name}.num_batches_tracked"].add_(1)
            elif isinstance(mod, nn.Flatten):
                x = x.reshape(x.shape[0], m, -1).transpose(0, 1)
                grouped = False
            elif isinstance(mod, nn.Unflatten):
                c, h, w_ = mod.unflattened_size
                x = x.transpose(0, 1).reshape(x.shape[1], m * c, h, w_)
                grouped = True
            elif isinstance(mod, (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Identity)):
                x = mod(x)
            else:
                raise RuntimeError(f"Grouped cannot run {type(mod).__name__}")
        if grouped:
            return x.reshape(x.shape[0], m, -1, *x.shape[2:]).transpose(0, 1)
        return x.squeeze(-1)  # the discriminator's head: [M, N, 1] → [M, N]


# ------------------------------------------------------------------------------------------------ timing
def timed(step, budget: float, min_reps: int = 2) -> float:
    step()  # warm-up
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - started < budget:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        if len(times) >= 20:
            break
    return statistics.median(times) * 1e3


def bench(data: str, members: int, budget: float, grouped: bool) -> dict[str, dict[str, float]]:
    gens, discs, sizes = build_nets(data, members)
    n, latent = sizes["batch"], sizes["latent"]
    torch.manual_seed(123)
    inputs = {"G": torch.randn(members, n, latent), "D": torch.randn(members, n, *SHAPES[data])}
    rows = {}
    for side, nets in (("G", gens), ("D", discs)):
        x = inputs[side]
        separate = [copy.deepcopy(net) for net in nets]
        stack = FunctionalStacked([copy.deepcopy(net) for net in nets])
        stack.bind()
        stack.train(True)

        def loop():
            for k, net in enumerate(separate):
                net.zero_grad(set_to_none=False)
                net(x[k]).mean().backward()

        def stacked(run):
            def step():
                stack.flat.grad.zero_()
                run(x).mean(dim=tuple(range(1, 2 if side == "D" else 5))).sum().backward()
            return step

        ways = {"loop": loop, "vmap": stacked(stack)}
        if grouped:
            ways["grouped"] = stacked(Grouped(stack))
        with torch.no_grad():  # correctness first: the same outputs as the separate nets (running stats aside)
            ref = torch.stack([copy.deepcopy(net)(x[k]) for k, net in enumerate(nets)])
            for way, run in (("vmap", stack), ("grouped", Grouped(stack))):
                if way in ways:
                    diff = (run(x) - ref).abs().max().item()
                    if diff > 1e-4:
                        raise SystemExit(f"{data} {side} M={members}: {way} differs from the loop by {diff:.2e}")
        rows[side] = {way: timed(step, budget) for way, step in ways.items()}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, nargs="+", default=[1, 4, 12])
    ap.add_argument("--data", nargs="+", default=["digits", "mnist"], choices=sorted(SHAPES))
    ap.add_argument("--budget", type=float, default=1.5, help="seconds of timed iterations per cell (at least 2)")
    ap.add_argument("--no-grouped", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    grouped = not args.no_grouped
    head = "| data | net | M | (a) loop ms | (b) vmap ms | " + ("(c) grouped ms | " if grouped else "") + \
           "(b) speed-up | " + ("(c) speed-up |" if grouped else "")
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; forward + backward, training mode\n")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for data in args.data:
        for members in args.members:
            for side, r in bench(data, members, args.budget, grouped).items():
                cells = [data, side, str(members), f"{r['loop']:.1f}", f"{r['vmap']:.1f}"]
                if grouped:
                    cells.append(f"{r['grouped']:.1f}")
                cells.append(f"{r['loop'] / r['vmap']:.2f}x")
                if grouped:
                    cells.append(f"{r['loop'] / r['grouped']:.2f}x")
                print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\n({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
