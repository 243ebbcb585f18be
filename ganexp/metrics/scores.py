"""Scores of generated samples, as pure functions of features, predictions or points.

FID, KID and IS are torchmetrics' own implementations, given features that the domain
classifier has already computed (a pass-through feature module): ganexp does not
re-implement their math. Precision / recall (k-NN manifolds, Kynkäänniemi et al. 2019),
mode coverage and the toy-data scores are small enough to live here.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
import warnings

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

# Which way is better, for leaderboards and best.ckpt.
LOWER_IS_BETTER = {"fid", "kid", "class_kl", "swd", "residual"}
HIGHER_IS_BETTER = {"is", "coverage", "precision", "recall", "modes", "hq"}


def better(metric: str, a: float, b: float | None) -> bool:
    """Whether value `a` of `metric` beats `b` (None and NaN lose to everything)."""
    if b is None or math.isnan(b):
        return not math.isnan(a)
    return a < b if metric in LOWER_IS_BETTER else a > b


class _Given(nn.Module):
    """The identity, for features computed beforehand (torchmetrics reads `num_features`)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


@contextmanager
def _quiet():
    """torchmetrics warns that KID / IS "will save all extracted features": they are in memory already."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def fid(real: Tensor, fake: Tensor) -> float:
    metric = FrechetInceptionDistance(feature=_Given(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid(real: Tensor, fake: Tensor, subsets: int = 50, subset_size: int = 1000) -> float:
    size = min(subset_size, len(real), len(fake))
    with _quiet():
        metric = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute()[0])


def inception_score(logits: Tensor, splits: int = 10) -> float:
    """The classifier's Inception Score: exp E[KL(p(y|x) || p(y))], mean over `splits`."""
    with _quiet():  # (and the std of a single split is undefined: only the mean is used)
        metric = InceptionScore(feature=_Given(logits.shape[1]), splits=min(splits, len(logits)))
        metric.update(logits.double())
        return float(metric.compute()[0])


def class_histogram(predicted: Tensor, n_classes: int) -> Tensor:
    return torch.bincount(predicted, minlength=n_classes).double() / len(predicted)


def coverage(predicted: Tensor, n_classes: int) -> int:
    """Classes produced with at least a tenth of their fair share (n / n_classes) of the samples."""
    return int((class_histogram(predicted, n_classes) >= 0.1 / n_classes).sum())


def class_kl(predicted_fake: Tensor, predicted_real: Tensor, n_classes: int, eps: float = 1e-6) -> float:
    """KL(fake class histogram || real class histogram), both as the classifier predicts them."""
    p = class_histogram(predicted_fake, n_classes) + eps
    q = class_histogram(predicted_real, n_classes) + eps
    p, q = p / p.sum(), q / q.sum()
    return float((p * (p / q).log()).sum())


def _kth_neighbour_radii(x: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance from each point of x to its k-th nearest other point of x."""
    return torch.cat([torch.cdist(c, x).topk(k + 1, largest=False).values[:, k] for c in x.split(chunk)])


def _inside(points: Tensor, manifold: Tensor, radii: Tensor, chunk: int = 1024) -> Tensor:
    """For each point: inside some ball (centre in `manifold`, radius from `radii`)?"""
    return torch.cat([(torch.cdist(c, manifold) <= radii[None]).any(1) for c in points.split(chunk)])


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Precision: share of fakes on the real manifold; recall: share of reals on the fake manifold."""
    real, fake = real.float(), fake.float()
    precision = _inside(fake, real, _kth_neighbour_radii(real, k)).float().mean()
    recall = _inside(real, fake, _kth_neighbour_radii(fake, k)).float().mean()
    return float(precision), float(recall)


def image_scores(real_features: Tensor, real_logits: Tensor, fake_features: Tensor, fake_logits: Tensor,
                 pr_samples: int = 5000) -> dict[str, float]:
    """Every image metric from the classifier's features and logits of real and generated images."""
    n_classes = real_logits.shape[1]
    m = min(pr_samples, len(real_features), len(fake_features))  # k-NN manifolds on equal counts
    precision, recall = precision_recall(real_features[:m], fake_features[:m])
    return {
        "fid": fid(real_features, fake_features),
        "kid": kid(real_features, fake_features),
        "is": inception_score(fake_logits),
        "coverage": coverage(fake_logits.argmax(1), n_classes),
        "class_kl": class_kl(fake_logits.argmax(1), real_logits.argmax(1), n_classes),
        "precision": precision,
        "recall": recall,
    }


def sliced_wasserstein(a: Tensor, b: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Mean 1-Wasserstein distance of the two point sets along random directions (equal counts used)."""
    n = min(len(a), len(b))
    directions = torch.randn(a.shape[1], n_projections, generator=torch.Generator().manual_seed(seed))
    directions = directions / directions.norm(dim=0, keepdim=True)
    pa = (a[:n].double() @ directions.double()).sort(0).values
    pb = (b[:n].double() @ directions.double()).sort(0).values
    return float((pa - pb).abs().mean())


def mode_scores(points: Tensor, centers: Tensor, sigma: float) -> dict[str, float]:
    """`hq`: share of points within 3σ of a mode; `modes`: modes holding a tenth of their fair share of them."""
    distance, nearest = torch.cdist(points.double(), centers.double()).min(1)
    good = distance <= 3 * sigma
    counts = torch.bincount(nearest[good], minlength=len(centers))
    return {"modes": int((counts >= 0.1 * len(points) / len(centers)).sum()), "hq": float(good.double().mean())}


def quadratic_residual(points: Tensor) -> float:
    """Median |y − (10 + x²)| of points in data units: 0 when every point lies on seed 002's curve."""
    x, y = points.double().unbind(1)
    return float((y - (10.0 + x.square())).abs().median())
