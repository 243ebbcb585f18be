"""Networks run stacked: M networks of one architecture as one, for a stacked sweep (ganexp/gan/stack.py).

`Stacked` runs row-wise MLPs with the members' rows side by side in one batch (StackedLinear: measured faster
than vmap at these sizes, see BENCHMARKS.md); `FunctionalStacked` runs any network (convolutions, batch norm,
spectral norm) as one vmap over functional_call, so member k computes what its own `net(x[k])` computes.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.utils.parametrizations import _SpectralNorm


def stacked(nets: list[nn.Module]):
    """The fastest stacked form these networks can run as: Stacked for row-wise MLPs, else FunctionalStacked."""
    return Stacked(nets) if row_wise_problem(nets[0]) is None else FunctionalStacked(nets)


def stack_problem(net: nn.Module) -> str | None:
    """Why `net` cannot run stacked in either form, or None."""
    return None if row_wise_problem(net) is None else functional_problem(net)


# Modules a stack can run with every member's samples in one batch: they treat each sample on its own.
ROW_WISE = (nn.Linear, nn.LeakyReLU, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout, nn.Flatten,
            nn.Sequential)


def row_wise_problem(net: nn.Module) -> str | None:
    """Why `net` cannot run as Stacked, or None: its class declares `stackable = True` (as the MLPs do), every
    layer is ROW_WISE, and it keeps no buffers."""
    if not getattr(type(net), "stackable", False):
        return f"{type(net).__name__} does not declare a forward that treats each sample on its own (stackable = True)"
    if any(True for _ in net.buffers()):
        return "it keeps buffers (batch norm or spectral norm), which stacked layers cannot hold"
    for module in net.modules():
        if module is not net and not isinstance(module, ROW_WISE):
            return f"it has {type(module).__name__} layers"
    return None


def _owner(net: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, attr = name.rpartition(".")
    return net.get_submodule(parent), attr


class StackedLinear(nn.Module):
    """The members' Linear layers at one position as one layer: the members' rows of the batch side by side
    ([M·N, in] → [M, N, in]), one batched matmul (torch.baddbmm) with the stacked weight [M, out, in]."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.__dict__["weight"], self.__dict__["bias"] = weight, bias  # Stacked's leaves, not registered here

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(self.weight.shape[0], -1, x.shape[-1])
        weight = self.weight.transpose(1, 2)  # [M, in, out]
        y = torch.bmm(x, weight) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), x, weight)
        return y.reshape(-1, y.shape[-1])


class Stacked:
    """M row-wise networks run as one: a copy of the first whose Linear layers are StackedLinear, fed the
    members' batches one after another ([M, N, ...] → [M·N, ...]).

    All weights live in one flat tensor (`flat`, the optimizer's one parameter), all gradients in `flat.grad`;
    each parameter position is a leaf [M, ...] viewing its slice of both, so the optimizer step, the members'
    lr and the freezing are a few whole-tensor ops. Every member's parameter is a view of its row of a leaf:
    the members' modules keep the stack's weights (callbacks, EMA, checkpoints read them as usual).
    `bind()` runs on the training device (moving a module copies its parameters, which would break the views)."""

    joint = True  # row-wise: D may score real and fake in one pass

    def __init__(self, nets: list[nn.Module]):
        self.nets, self.members = nets, len(nets)
        self.names = [name for name, _ in nets[0].named_parameters()]
        self.leaves: dict[str, Tensor] = {}
        self.spans: dict[str, tuple[int, int]] = {}  # name → its leaf's [start, end) in `flat`
        self.flat: Tensor | None = None
        self.net: nn.Module | None = None

    def bind(self) -> None:
        self.bind_parameters()
        self.net = copy.deepcopy(self.nets[0])
        for name, module in self.nets[0].named_modules():
            if isinstance(module, nn.Linear):
                weight, bias = self.leaves[f"{name}.weight"], self.leaves.get(f"{name}.bias")
                setattr(*_owner(self.net, name), StackedLinear(weight, bias))  # ROW_WISE: no other layer has any

    def bind_parameters(self) -> None:
        """`flat`, its gradient and the leaves viewing them; the members' parameters become views of their rows."""
        owners = {name: [_owner(net, name) for net in self.nets] for name in self.names}
        stacked = {name: torch.stack([getattr(m, attr).detach() for m, attr in pairs]) for name, pairs in owners.items()}
        self.flat = torch.cat([t.reshape(-1) for t in stacked.values()]).requires_grad_(True)
        self.flat.grad = torch.zeros_like(self.flat)
        start = 0
        for name, pairs in owners.items():
            shape, end = stacked[name].shape, start + stacked[name].numel()
            leaf = self.flat.detach()[start:end].view(shape).requires_grad_(True)
            leaf.grad = self.flat.grad[start:end].view(shape)  # backward adds into it, in place
            for k, (module, attr) in enumerate(pairs):
                module._parameters[attr] = nn.Parameter(leaf.data[k], requires_grad=True)  # a view of row k
            self.leaves[name], self.spans[name], start = leaf, (start, end), end

    def per_member(self, values: Tensor) -> Tensor:
        """A per-member vector [M] spread over `flat`'s elements: each member's value at its rows of every leaf."""
        return torch.cat([values.repeat_interleave(leaf[0].numel()) for leaf in self.leaves.values()])

    def train(self, on: bool) -> None:
        """Gradients for this network in this phase (D's step or G's), or none."""
        for leaf in self.leaves.values():
            leaf.requires_grad_(on)

    def zero_grad(self) -> None:
        self.flat.grad.zero_()

    def grad_norms(self) -> Tensor:
        """Each member's gradient norm over its parameters: [M]."""
        return torch.stack([leaf.grad.flatten(1).square().sum(1) for leaf in self.leaves.values()]).sum(0).sqrt()

    def __call__(self, x: Tensor) -> Tensor:
        y = self.net(x.reshape(-1, *x.shape[2:]))
        return y.reshape(self.members, -1, *y.shape[1:])


class _StackedSpectralNorm(_SpectralNorm):
    """torch's spectral norm parametrization with a power iteration vmap can batch: the same arithmetic, u and v
    written by copy_ (vmap cannot batch F.normalize's `out=`). The class of the running copy's only."""

    @torch.no_grad()
    def _power_method(self, weight_mat: Tensor, n_power_iterations: int) -> None:
        for _ in range(n_power_iterations):
            self._u.copy_(F.normalize(torch.mv(weight_mat, self._v), dim=0, eps=self.eps))
            self._v.copy_(F.normalize(torch.mv(weight_mat.H, self._u), dim=0, eps=self.eps))


def functional_problem(net: nn.Module) -> str | None:
    """Why `net` cannot run as a FunctionalStacked member, or None: parameters, buffers (batch norm, the
    parametrized spectral norm) and dropout are handled; the old hook-based spectral_norm (it writes module
    attributes in a pre-hook) and lazy modules (no shapes yet) are refused."""
    for module in net.modules():
        if isinstance(module, nn.modules.lazy.LazyModuleMixin):
            return f"it has a lazy {type(module).__name__} (no shapes before its first forward)"
        for hook in module._forward_pre_hooks.values():
            if type(hook).__name__ == "SpectralNorm":
                return "old-style torch.nn.utils.spectral_norm (hook) cannot be stacked; use parametrizations.spectral_norm"
    return None


class FunctionalStacked(Stacked):
    """M networks of one architecture run as one: vmap over functional_call of a copy of the first. Weights
    as Stacked's; buffers are stacked into `buffers` (name → [M, ...]), each member's buffer a view of its row."""

    joint = False  # batch norm: D scores real and fake in passes of their own, as a separate run does

    def __init__(self, nets: list[nn.Module]):
        super().__init__(nets)
        self.buffer_names = [name for name, _ in nets[0].named_buffers()]
        self.buffers: dict[str, Tensor] = {}  # name → the members' buffers [M, ...]
        self._run = None

    def bind(self) -> None:
        for net in self.nets:
            if problem := functional_problem(net):
                raise ValueError(f"cannot stack {type(net).__name__}: {problem}")
            if [n for n, _ in net.named_parameters()] != self.names or \
                    [n for n, _ in net.named_buffers()] != self.buffer_names:
                raise ValueError("the stacked networks differ in their parameters or buffers")
        # The copy that runs (made before the members' tensors become views): functional_call swaps every
        # parameter and buffer in, so it holds none of its own (meta device).
        self.net = copy.deepcopy(self.nets[0]).to("meta")
        for module in self.net.modules():
            if type(module) is _SpectralNorm:
                module.__class__ = _StackedSpectralNorm
        self.bind_parameters()
        for name in self.buffer_names:
            pairs = [_owner(net, name) for net in self.nets]
            buffer = torch.stack([getattr(m, attr).detach() for m, attr in pairs])
            for k, (module, attr) in enumerate(pairs):
                module._buffers[attr] = buffer[k]  # a view of row k: updated in place by the stacked forward
            self.buffers[name] = buffer
        self._run = vmap(self._one, in_dims=(0, 0, 0), randomness="different")

    def _one(self, params: dict, buffers: dict, x: Tensor) -> Tensor:
        return functional_call(self.net, (params, buffers), (x,), tie_weights=False)

    def __call__(self, x: Tensor) -> Tensor:
        """[M, N, ...] → [M, N, ...]: member k's network on x[k], in the mode (train / eval) of member 0's modules."""
        for mine, theirs in zip(self.net.modules(), self.nets[0].modules()):
            mine.training = theirs.training
        return self._run(self.leaves, self.buffers, x)
