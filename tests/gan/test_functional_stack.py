"""ganexp/functional_stack.py: member k of a FunctionalStacked computes what its network alone computes
(outputs, gradients, batch norm / spectral norm buffers, eval mode), and its modules hold the stack's tensors."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ganexp.gan.stacked_nets import FunctionalStacked, functional_problem
from ganexp.models.dcgan import DCGANDiscriminator, DCGANGenerator

M, N, LATENT, LR = 3, 6, 16, 0.01
ATOL, RTOL = 1e-5, 1e-5
SHAPE = (1, 16, 16)  # two halvings: D and G both keep a BatchNorm2d between convolutions


def _nets(make) -> list[nn.Module]:
    nets = []
    for seed in range(M):
        torch.manual_seed(seed)
        nets.append(make())
    return nets


MAKERS = {
    "D": (lambda: DCGANDiscriminator(SHAPE, width=8), (N, *SHAPE)),
    "G": (lambda: DCGANGenerator(LATENT, SHAPE, width=8), (N, LATENT)),
    "D-spectral": (lambda: DCGANDiscriminator(SHAPE, width=8, spectral_norm=True), (N, *SHAPE)),
}


def _loss(y: torch.Tensor) -> torch.Tensor:  # one member's loss: anything nonlinear in the output
    return (y - 0.3).square().mean()


@pytest.mark.parametrize("kind", list(MAKERS))
def test_each_member_is_its_separate_net_over_3_updates(kind):
    make, shape = MAKERS[kind]
    nets = _nets(make)
    alone = [copy.deepcopy(net) for net in nets]
    assert any((a - b).abs().max() > 0.01 for a, b in zip(alone[0].parameters(), alone[1].parameters()))  # distinct
    stack = FunctionalStacked(nets)
    stack.bind()
    assert stack.members == M and stack.names == [n for n, _ in alone[0].named_parameters()]
    assert stack.flat.numel() == M * sum(p.numel() for p in alone[0].parameters())
    assert stack.buffers, "DCGAN keeps batch norm buffers"
    gen = torch.Generator().manual_seed(7)
    for step in range(3):
        x = torch.randn(M, *shape, generator=gen)
        stack.train(True), stack.zero_grad()
        assert stack.flat.grad.abs().max() == 0
        y = stack(x)
        assert y.shape[:2] == (M, N)
        torch.stack([_loss(y[k]) for k in range(M)]).sum().backward()
        norms = stack.grad_norms()
        for k, net in enumerate(alone):
            net.zero_grad()
            out = net(x[k])
            _loss(out).backward()
            torch.testing.assert_close(y[k], out, atol=ATOL, rtol=RTOL, msg=f"{kind} step {step} member {k} output")
            for name, param in net.named_parameters():
                torch.testing.assert_close(stack.leaves[name].grad[k], param.grad, atol=ATOL, rtol=RTOL,
                                           msg=f"{kind} step {step} member {k} grad {name}")
            own = torch.cat([p.grad.flatten() for p in net.parameters()]).norm()
            torch.testing.assert_close(norms[k], own, atol=ATOL, rtol=RTOL)
        start, end = stack.spans[stack.names[0]]
        assert stack.leaves[stack.names[0]].grad.data_ptr() == stack.flat.grad[start:end].data_ptr()
        with torch.no_grad():
            stack.flat -= LR * stack.flat.grad
            for net in alone:
                for param in net.parameters():
                    param -= LR * param.grad
        for k, (mine, theirs) in enumerate(zip(nets, alone)):
            ours, separate = mine.state_dict(), theirs.state_dict()
            assert list(ours) == list(separate)
            for name, tensor in separate.items():  # weights and buffers (running stats, batches tracked, u, v)
                torch.testing.assert_close(ours[name], tensor, atol=ATOL, rtol=RTOL,
                                           msg=f"{kind} step {step} member {k} {name}")
    bn = next(name for name in stack.buffer_names if name.endswith("running_mean"))
    assert (stack.buffers[bn][0] - stack.buffers[bn][1]).abs().max() > 1e-4  # each member's own statistics
    assert all(int(t) == 3 for name, t in nets[0].state_dict().items() if name.endswith("num_batches_tracked"))
    # eval mode: running statistics (and spectral norm without a power iteration), the members' own
    for net in (*nets, *alone):
        net.eval()
    x = torch.randn(M, *shape, generator=gen)
    with torch.no_grad():
        y = stack(x)
        for k, net in enumerate(alone):
            torch.testing.assert_close(y[k], net(x[k]), atol=ATOL, rtol=RTOL, msg=f"{kind} eval member {k}")
    for k, (mine, theirs) in enumerate(zip(nets, alone)):  # eval changed no buffer
        for name, tensor in theirs.state_dict().items():
            torch.testing.assert_close(mine.state_dict()[name], tensor, atol=ATOL, rtol=RTOL)


def test_a_stack_differs_from_the_wrong_member():
    """The comparison above can fail: member 1's output is not member 0's net's."""
    make, shape = MAKERS["D"]
    nets = _nets(make)
    alone = copy.deepcopy(nets[0])
    stack = FunctionalStacked(nets)
    stack.bind()
    x = torch.randn(M, *shape)
    assert (stack(x)[1] - alone(x[1])).abs().max() > 1e-3


def test_members_hold_views_of_the_stack():
    nets = _nets(MAKERS["D-spectral"][0])
    stack = FunctionalStacked(nets)
    stack.bind()
    with torch.no_grad():
        stack.flat.add_(1.5)
        for name in stack.buffer_names:
            stack.buffers[name].add_(2)
    before = [{k: v.clone() for k, v in net.state_dict().items()} for net in _nets(MAKERS["D-spectral"][0])]
    for k, net in enumerate(nets):
        for name, tensor in net.state_dict().items():
            shift = 1.5 if name in stack.leaves else 2
            torch.testing.assert_close(tensor.double(), before[k][name].double() + shift, atol=1e-5, rtol=0, msg=name)
    first = next(iter(nets[1].parameters()))
    assert first.untyped_storage().data_ptr() == stack.flat.untyped_storage().data_ptr()
    # and the other way: a step of the member's own modules is the stack's
    with torch.no_grad():
        nets[2].head.bias.fill_(-4.0)
    assert stack.leaves["head.bias"][2].item() == -4.0 and stack.leaves["head.bias"][1].item() != -4.0
    # no gradients while off; zero_grad starts a phase from zero
    stack.train(False)
    assert not any(leaf.requires_grad for leaf in stack.leaves.values())
    stack.flat.grad.fill_(1.0)
    stack.train(True), stack.zero_grad()
    assert stack.flat.grad.abs().max() == 0 and all(leaf.requires_grad for leaf in stack.leaves.values())
    lrs = stack.per_member(torch.tensor([1.0, 2.0, 3.0]))
    assert lrs.shape == stack.flat.shape
    start, end = stack.spans["head.bias"]
    assert lrs[start:end].tolist() == [1.0, 2.0, 3.0]


def test_functional_problem():
    assert functional_problem(DCGANDiscriminator(SHAPE, width=8)) is None  # batch norm stacks
    assert functional_problem(DCGANGenerator(LATENT, SHAPE, width=8)) is None
    assert functional_problem(DCGANDiscriminator(SHAPE, width=8, spectral_norm=True)) is None  # parametrizations
    old = nn.Sequential(nn.utils.spectral_norm(nn.Linear(4, 3)))  # the hook-based one writes attributes
    reason = functional_problem(old)
    assert reason and "spectral_norm" in reason and "\n" not in reason
    with pytest.raises(ValueError, match="spectral_norm"):
        FunctionalStacked([old, copy.deepcopy(old)]).bind()
    assert "lazy" in functional_problem(nn.Sequential(nn.LazyLinear(3)))


def test_dropout_draws_a_mask_per_member():
    nets = [nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)) for _ in range(M)]
    stack = FunctionalStacked(nets)
    stack.bind()
    with torch.no_grad():
        stack.flat.zero_()
        stack.leaves["0.bias"].fill_(1.0)
        y = stack(torch.zeros(M, 64, 8))
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert not torch.equal(y[0], y[1])  # randomness="different"
    for net in nets:
        net.eval()
    with torch.no_grad():
        assert torch.equal(stack(torch.zeros(M, 4, 8)), torch.ones(M, 4, 8))
