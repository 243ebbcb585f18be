"""Plain nn.Modules that only implement forward. Shapes come from the data config."""
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(net: nn.Module):
    """`net` in eval mode inside the block; its own mode is restored after it."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)
