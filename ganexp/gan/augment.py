"""Differentiable augmentation (DiffAugment, Zhao et al. 2020): the same random colour, translation and cutout
applied to real and fake images before D, in D's step and G's, so D cannot memorise a small training set.

Each op is arithmetic, indexing and a mask, so gradients reach G through D's view of its fakes. The numbers are
drawn (`DiffAugment.draw`) apart from their use: a run draws them from its own generator and a stack draws each
member's from the member's (GANModule.augmented), so a stack member and a resumed run draw what their run draws.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ganexp.errors import ConfigError, shown

POLICIES = ("color", "translation", "cutout")
TRANSLATION = 1 / 8  # the paper's: a shift of up to 1/8 of the image's side, zeros shifted in
CUTOUT = 1 / 2  # the paper's: a zeroed square of half the image's side


def brightness(x: Tensor, b: Tensor) -> Tensor:
    """x + b per image; x [N, C, H, W], b [N] (drawn in [-0.5, 0.5))."""
    return x + b.view(-1, 1, 1, 1)


def saturation(x: Tensor, s: Tensor) -> Tensor:
    """Each pixel's distance from its mean over channels scaled by s [N] (drawn in [0, 2)); grey images keep."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * s.view(-1, 1, 1, 1) + mean


def contrast(x: Tensor, c: Tensor) -> Tensor:
    """Each image's distance from its own mean scaled by c [N] (drawn in [0.5, 1.5))."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c.view(-1, 1, 1, 1) + mean


def translate(x: Tensor, shift: Tensor) -> Tensor:
    """Image i moved down by shift[i, 0] and right by shift[i, 1] whole pixels, zeros where it came from
    outside: out[i, :, r, c] = x[i, :, r - dy, c - dx]. x [N, C, H, W], shift [N, 2] integers."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device) - shift[:, :1]  # [N, H]: the source row of each row
    cols = torch.arange(w, device=x.device) - shift[:, 1:]  # [N, W]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # [N, H, W]
    picked = x[torch.arange(n, device=x.device)[:, None, None], :, rows.clamp(0, h - 1)[:, :, None],
               cols.clamp(0, w - 1)[:, None, :]]  # [N, H, W, C]: advanced indices first
    return picked.permute(0, 3, 1, 2) * inside[:, None].to(x.dtype)


def cutout(x: Tensor, centre: Tensor, size: tuple[int, int]) -> Tensor:
    """Image i with a size[0] × size[1] square zeroed, its rows from centre[i, 0] - size[0] // 2 (columns
    likewise), cut where it leaves the image. x [N, C, H, W], centre [N, 2] integers."""
    _, _, h, w = x.shape
    top, left = centre[:, :1] - size[0] // 2, centre[:, 1:] - size[1] // 2
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows, in_cols = (rows >= top) & (rows < top + size[0]), (cols >= left) & (cols < left + size[1])
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # [N, H, W]
    return x * keep[:, None].to(x.dtype)


class DiffAugment:
    """The policies of `augment.policy`, in their order (empty: augment=none, nothing drawn, nothing changed),
    for images of `shape` [C, H, W]."""

    def __init__(self, policy: str | Sequence[str] = (), shape: Sequence[int] = ()):
        names = [p.strip() for p in policy.split(",")] if isinstance(policy, str) else [str(p) for p in policy]
        names = [p for p in names if p]
        for name in names:
            if name not in POLICIES:
                raise ConfigError(f"augment.policy: {shown(name)!r} is not a DiffAugment policy; the known ones are "
                                  f"{', '.join(POLICIES)} (e.g. augment.policy=[color,translation])")
            if names.count(name) > 1:
                raise ConfigError(f"augment.policy lists {name} twice; name each policy once")
        if names and len(shape) != 3:
            raise ConfigError(f"augment=diffaugment augments images [C, H, W], but data.shape={list(shape)} is not "
                              "one (toy 2-D points?); use augment=none for this data")
        self.policy = tuple(names)
        if names:
            h, w = int(shape[1]), int(shape[2])
            self.shift = (int(h * TRANSLATION + 0.5), int(w * TRANSLATION + 0.5))  # 8 px: 1, 28 px: 4
            self.cut = (int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5))  # 8 px: 4, 28 px: 14
            # the square's centre: any pixel, and one past the last for an even size (the square is symmetric)
            self.centres = (h + 1 - self.cut[0] % 2, w + 1 - self.cut[1] % 2)

    def __bool__(self) -> bool:
        return bool(self.policy)

    def draw(self, generators: Sequence[torch.Generator | None], parts: Sequence[int],
             device: torch.device | str) -> dict[str, Tensor]:
        """The numbers for [M·N] images, member-major: member k's drawn from generators[k] (None: torch's global
        RNG) for each of `parts` (row counts, in the order its run augments them), policy by policy."""
        drawn = [self._draw(rows, g, device) for g in generators for rows in parts]
        return {key: torch.cat([d[key] for d in drawn]) for key in drawn[0]}

    def _draw(self, n: int, generator: torch.Generator | None, device) -> dict[str, Tensor]:
        out = {}
        for name in self.policy:
            if name == "color":
                u = torch.rand((3, n), generator=generator, device=device)
                out.update(brightness=u[0] - 0.5, saturation=u[1] * 2, contrast=u[2] + 0.5)
            elif name == "translation":
                out["shift"] = torch.stack([torch.randint(-s, s + 1, (n,), generator=generator, device=device)
                                            for s in self.shift], dim=1)
            else:
                out["centre"] = torch.stack([torch.randint(0, c, (n,), generator=generator, device=device)
                                             for c in self.centres], dim=1)
        return out

    def __call__(self, x: Tensor, drawn: dict[str, Tensor]) -> Tensor:
        """x [N, C, H, W] augmented with `drawn` (of `draw`, N rows)."""
        for name in self.policy:
            if name == "color":
                x = contrast(saturation(brightness(x, drawn["brightness"].to(x.dtype)),
                                        drawn["saturation"].to(x.dtype)), drawn["contrast"].to(x.dtype))
            elif name == "translation":
                x = translate(x, drawn["shift"])
            else:
                x = cutout(x, drawn["centre"], self.cut)
        return x
