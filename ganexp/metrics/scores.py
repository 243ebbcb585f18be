"""Scores of generated samples, as pure functions of features, predictions or points.

FID, KID and IS are torchmetrics' own implementations, given features that the domain
classifier has already computed (a pass-through feature module): ganexp does not
re-implement their math. Precision / recall (k-NN manifolds, Kynkäänniemi et al. 2019), density and
coverage on the same k-NN balls (Naeem et al. 2020, the `prdc` definitions; reported as `density` and
`knn_coverage`, not to be confused with `coverage`, the classes produced), mode coverage and the toy-data
scores are small enough to live here.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from ganexp.errors import ConfigError


class Metric(NamedTuple):
    higher_is_better: bool
    min_samples: int  # the fewest generated samples whose score means something (require_samples)
    possible: tuple[float, float] = (0.0, math.inf)  # the values a measurement can take (compare refuses others)


# The metric registry: every score ganexp reports, in report order, whether higher is better (leaderboards,
# best.ckpt, eval.monitor and compare read it here) and the fewest samples it needs (measured real-vs-real):
# - fid 2: a covariance needs 2; FID is biased upwards ~1/n (digits: 102 at n=10, 11 at 100): compare at equal n.
# - kid 50: real-vs-real it scatters ±4.4 at n=10, ±0.9 at 50, against ~7 for noise.
# - is 100: 10 splits of >= 10 samples (a split of m samples caps IS at m).
# - coverage, class_kl 100: 10 per class expected: a fair generator misses a class with P < 3e-4.
# - precision, recall 100: below, the k=3-NN balls are so wide that noise scores precision >= 0.93 on digits;
#   density, knn_coverage 100: the same balls. density is ~1 for a generator that matches the data, can exceed 1.
# - swd 100; modes 250: a tenth of the fair share of the grid's 25 modes is then >= 1 point.
# - hq 100: a share, ± <= 0.05 at 100.  residual 10: a median, robust from a few points.
# Possible values: distances, divergences and counts are >= 0 (kid and class_kl clamped, see image_scores);
# precision, recall and hq are shares in [0, 1].
SHARE = (0.0, 1.0)
IMAGE_METRICS = {"fid": Metric(False, 2), "kid": Metric(False, 50), "is": Metric(True, 100),
                 "coverage": Metric(True, 100), "class_kl": Metric(False, 100), "precision": Metric(True, 100, SHARE),
                 "recall": Metric(True, 100, SHARE), "density": Metric(True, 100),
                 "knn_coverage": Metric(True, 100, SHARE)}
# In Inception features (eval.features=inception) the classes are ImageNet's 1008: no coverage, no class_kl.
INCEPTION_METRICS = tuple(m for m in IMAGE_METRICS if m not in ("coverage", "class_kl"))
TOY_METRICS = {"swd": Metric(False, 100), "modes": Metric(True, 250), "hq": Metric(True, 100, SHARE),
               "residual": Metric(False, 10)}
METRICS = {**IMAGE_METRICS, **TOY_METRICS}
HIGHER_IS_BETTER = {m for m, info in METRICS.items() if info.higher_is_better}
LOWER_IS_BETTER = {m for m, info in METRICS.items() if not info.higher_is_better}


def min_samples(metrics) -> int:
    """The fewest samples that carry every one of `metrics` (names of the registry)."""
    return max(METRICS[m].min_samples for m in metrics)


def require_samples(n: int, metrics, unit: str = "samples") -> None:
    """ConfigError naming each of `metrics` that n samples cannot carry, and how many to give."""
    if short := [f"{m} (needs >= {METRICS[m].min_samples})" for m in metrics if n < METRICS[m].min_samples]:
        raise ConfigError(f"{n} {unit} cannot carry {', '.join(short)}; give at least {min_samples(metrics)} {unit}")


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


def _quiet() -> warnings.catch_warnings:
    """torchmetrics warns that KID / IS "will save all extracted features": they are in memory already."""
    return warnings.catch_warnings(action="ignore", category=UserWarning)


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


def density_coverage(real: Tensor, fake: Tensor, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Naeem et al. 2020: density = the mean number of real k-NN balls holding a fake, over k; coverage = the share
    of real points whose ball holds at least one fake (the radii precision uses; strictly inside, as `prdc` counts:
    a fake on a ball's edge, or a copy of a real point whose radius is 0, is not inside)."""
    real, fake = real.float(), fake.float()
    radii = _kth_neighbour_radii(real, k)
    held = torch.cat([(torch.cdist(c, real) < radii[None]).sum(1) for c in fake.split(chunk)])  # strictly, as prdc
    nearest_fake = torch.cat([torch.cdist(c, fake).min(1).values for c in real.split(chunk)])
    return float(held.float().mean() / k), float((nearest_fake < radii).float().mean())


def image_scores(real_features: Tensor, real_logits: Tensor | None, fake_features: Tensor, fake_logits: Tensor,
                 pr_samples: int = 5000, kid_subsets: int = 50) -> dict[str, float]:
    """Every image metric from the classifier's features and logits of real and generated images (real_logits
    None: Inception's, whose 1008 classes give no coverage or class_kl). The distances (fid, kid, class_kl) are
    reported clamped at 0: KID is an unbiased estimate that scatters around ~0 for a perfect generator, and FID's
    matrix square root can round below 0."""
    m = min(pr_samples, len(real_features), len(fake_features))  # k-NN manifolds on equal counts
    precision, recall = precision_recall(real_features[:m], fake_features[:m])
    density, knn_coverage = density_coverage(real_features[:m], fake_features[:m])
    scores = {
        "fid": max(0.0, fid(real_features, fake_features)),
        "kid": max(0.0, kid(real_features, fake_features, subsets=kid_subsets)),
        "is": inception_score(fake_logits),
    }
    if real_logits is not None:
        n_classes = real_logits.shape[1]
        scores["coverage"] = coverage(fake_logits.argmax(1), n_classes)
        scores["class_kl"] = max(0.0, class_kl(fake_logits.argmax(1), real_logits.argmax(1), n_classes))
    return {**scores, "precision": precision, "recall": recall, "density": density, "knn_coverage": knn_coverage}


def sliced_wasserstein(a: Tensor, b: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Mean 1-Wasserstein distance of the two point sets along random directions (equal counts used)."""
    n = min(len(a), len(b))
    return float((sorted_projections(a[:n], n_projections, seed) - sorted_projections(b[:n], n_projections, seed))
                 .abs().mean())


def sorted_projections(points: Tensor, n_projections: int = 256, seed: int = 0) -> Tensor:
    """[n_projections, n]: the points' coordinates along sliced_wasserstein's random directions, each row sorted
    (a fixed reference set's rows are computed once: Evaluator keeps them)."""
    directions = torch.randn(points.shape[1], n_projections, generator=torch.Generator().manual_seed(seed))
    directions = directions / directions.norm(dim=0, keepdim=True)
    return (directions.double().T @ points.double().T).sort(1).values  # rows contiguous: 1.7x faster than dim 0


def mode_scores(points: Tensor, centers: Tensor, sigma: float) -> dict[str, float]:
    """`hq`: share of points within 3σ of a mode; `modes`: modes holding a tenth of their fair share of them."""
    distance, nearest = torch.cdist(points.double(), centers.double()).min(1)
    good = distance <= 3 * sigma
    counts = torch.bincount(nearest[good], minlength=len(centers))
    return {"modes": int((counts >= 0.1 * len(points) / len(centers)).sum()), "hq": float(good.double().mean())}
