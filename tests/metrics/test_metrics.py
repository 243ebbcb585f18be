"""Metrics against closed forms and known inputs; the domain classifier's hash; the digits evaluator."""
from __future__ import annotations

import math

import pytest
import torch

from ganexp.errors import ConfigError
from ganexp.metrics import classifier as clf
from ganexp.data.base import quantize
from ganexp.data.toy import quadratic_residual
from ganexp.metrics.evaluator import Evaluator
from ganexp.metrics.scores import (better, class_kl, coverage, density_coverage, fid, inception_score, kid,
                                   mode_scores, precision_recall, sliced_wasserstein)


def gaussian(n, mean, std, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(std), generator=g) * torch.tensor(std) + torch.tensor(mean)


def test_fid_of_one_gaussian_is_near_zero():
    a = gaussian(20_000, [0.0] * 4, [1.0] * 4, seed=0)
    b = gaussian(20_000, [0.0] * 4, [1.0] * 4, seed=1)
    assert fid(a, b) == pytest.approx(0.0, abs=0.01)


def test_fid_between_gaussians_matches_the_closed_form():
    # Diagonal covariances: FID = |mu1 - mu2|^2 + sum (s1 - s2)^2
    mu1, s1, mu2, s2 = [0.0, 1.0, 0.0], [1.0, 2.0, 0.5], [1.0, -1.0, 0.5], [2.0, 1.0, 0.5]
    expected = sum((a - b) ** 2 for a, b in zip(mu1, mu2)) + sum((a - b) ** 2 for a, b in zip(s1, s2))
    assert expected == pytest.approx(7.25)
    value = fid(gaussian(50_000, mu1, s1, seed=0), gaussian(50_000, mu2, s2, seed=1))
    assert value == pytest.approx(expected, rel=0.03)


@pytest.mark.slow
def test_kid_equals_the_unbiased_polynomial_mmd_by_hand():
    real, fake = gaussian(50, [0.0] * 3, [1.0] * 3, seed=0), gaussian(50, [0.5] * 3, [1.0] * 3, seed=1)
    k = lambda x, y: (x @ y.T / 3 + 1) ** 3  # noqa: E731 - the kernel KID defines
    kxx, kyy, kxy = k(real, real), k(fake, fake), k(real, fake)
    m = 50
    by_hand = ((kxx.sum() - kxx.diag().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
               - 2 * kxy.mean())
    # one subset of all 50 samples: the permutation does not change the value
    assert kid(real, fake, subsets=1, subset_size=50) == pytest.approx(float(by_hand), rel=1e-6)
    a, b = gaussian(2000, [0.0] * 3, [1.0] * 3, seed=3), gaussian(2000, [0.0] * 3, [1.0] * 3, seed=4)
    shifted = gaussian(2000, [0.5] * 3, [1.0] * 3, seed=5)
    assert abs(kid(a, b)) < kid(a, shifted) / 20  # the same distribution: near 0


def test_inception_score_on_known_predictions():
    confident = torch.eye(10).repeat(100, 1) * 50  # 1000 sure predictions, every class equally often
    assert inception_score(confident, splits=1) == pytest.approx(10.0, rel=1e-4)
    one_class = torch.zeros(1000, 10)
    one_class[:, 3] = 50
    assert inception_score(one_class, splits=1) == pytest.approx(1.0, rel=1e-4)


def test_coverage_and_class_kl_of_a_collapsed_generator():
    real = torch.arange(1000) % 10
    collapsed = torch.full((1000,), 3)
    assert coverage(collapsed, 10) == 1
    assert coverage(real, 10) == 10
    assert class_kl(collapsed, real, 10) == pytest.approx(math.log(10), rel=1e-3)  # KL(delta || uniform)
    assert class_kl(real, real, 10) == pytest.approx(0.0, abs=1e-9)
    # a class with under a tenth of its fair share (100 / 10 = 10 samples) does not count
    almost = torch.cat([torch.full((991,), 0), torch.arange(1, 10)])
    assert coverage(almost, 10) == 1


def test_precision_and_recall_on_known_sets():
    real = gaussian(500, [0.0, 0.0], [1.0, 1.0], seed=0)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    far = real + 100.0
    assert precision_recall(real, far) == (0.0, 0.0)
    core = real[real.norm(dim=1) < 0.5]  # a generator that only draws the centre of the real data
    precision, recall = precision_recall(real, core)
    assert precision == 1.0 and recall < 0.5


def test_density_and_knn_coverage_equal_their_hand_computed_values():
    line = lambda *xs: torch.tensor([[x, 0.0] for x in xs])  # noqa: E731 - points on a line, distances by eye
    real, fake = line(0, 1, 3, 7), line(0.5, 5.5, 20)
    # k=1 radii 1, 1, 2, 4: 0.5 lies in the balls of 0 and 1, 5.5 in 7's, 20 in none; 3's nearest fake is 2.5 away
    assert density_coverage(real, fake, k=1) == (pytest.approx(3 / 3), 0.75)
    # k=2 radii 3, 2, 3, 6: 0.5 in the balls of 0, 1 and 3, 5.5 in 3's and 7's; every real ball holds a fake
    assert density_coverage(real, fake, k=2) == (pytest.approx(5 / 6), 1.0)
    # a tie, as the review found it (fake 3 on the edges of the balls of 0 and 1): k=3 radii 3, 2, 2, 3, 9
    assert density_coverage(line(0, 1, 2, 3, 10), line(3, 20, 30, 40, 50), k=3) == pytest.approx((0.2, 0.6))
    same = gaussian(300, [0.0, 0.0], [1.0, 1.0], seed=1)
    assert density_coverage(same, same.clone())[1] == 1.0
    assert density_coverage(same, same + 100.0) == (0.0, 0.0)


@pytest.mark.slow
def test_toy_scores():
    centers = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert mode_scores(centers.repeat(25, 1), centers, sigma=0.02) == {"modes": 4, "hq": 1.0}
    one_mode = torch.cat([centers[:1].repeat(90, 1), torch.full((10, 2), 5.0)])
    assert mode_scores(one_mode, centers, sigma=0.02) == {"modes": 1, "hq": 0.9}
    x = torch.linspace(-50, 50, 101)
    assert quadratic_residual(torch.stack([x, 10 + x**2], 1)) == 0.0
    assert quadratic_residual(torch.stack([x, 13 + x**2], 1)) == pytest.approx(3.0)
    a = gaussian(20_000, [0.0, 0.0], [1.0, 1.0], seed=0)
    # shifting by 3 along x moves every projection on direction u by 3|u_x|: E|cos| = 2/pi
    assert sliced_wasserstein(a, a + torch.tensor([3.0, 0.0])) == pytest.approx(3 * 2 / math.pi, rel=0.05)
    assert sliced_wasserstein(a, a) == 0.0


def test_better_knows_each_metrics_direction():
    assert better("fid", 1.0, 2.0) and not better("fid", 2.0, 1.0)
    assert better("is", 2.0, 1.0) and better("recall", 0.9, 0.1)
    assert better("fid", 5.0, None) and not better("fid", math.nan, None) and better("fid", 1.0, math.nan)


def test_quantize_maps_the_value_range_to_uint8():
    x = torch.tensor([-1.0, -2.0, 0.0, 1.0, 3.0]).view(5, 1, 1, 1)
    assert quantize(x, (-1, 1)).flatten().tolist() == [0, 0, 128, 255, 255]
    assert quantize(torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1, 1), (0, 1)).flatten().tolist() == [0, 128, 255]


# the domain classifier ------------------------------------------------------------------------------

@pytest.mark.slow
def test_digits_classifier_meets_its_bar_and_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("GANEXP_CACHE_DIR", str(tmp_path))
    model, info = clf.load_classifier("digits", log=lambda *_: None)
    assert info["test_accuracy"] >= 0.95 and info["n_test"] == 360 and info["n_train"] == 1437
    assert info["sha256"] == clf.state_hash(model.state_dict())
    _, again = clf.load_classifier("digits", log=lambda *_: None)  # from the cache: same hash, no retraining
    assert again["sha256"] == info["sha256"] and again["train_seconds"] == info["train_seconds"]

    # a cached file that fails its checks is retrained, never trusted: tests/metrics/test_cache_trust.py


def test_classifier_refuses_unlabelled_data():
    with pytest.raises(ConfigError, match="no domain classifier for data 'image_folder'"):
        clf.load_split("image_folder", train=True)


@pytest.fixture(scope="module")
def digits_evaluator():
    return Evaluator("digits", log=lambda *_: None)


@pytest.mark.slow
def test_real_train_vs_test_is_small_and_noise_is_large(digits_evaluator):
    floor = digits_evaluator.floor(360)
    noise = digits_evaluator.score(torch.randint(0, 256, (360, 1, 8, 8), dtype=torch.uint8))
    assert floor["fid"] < noise["fid"] / 10
    assert floor["coverage"] == 10 and floor["precision"] > 0.7 and floor["recall"] > 0.7
    assert noise["precision"] < 0.2 and noise["recall"] < 0.2 and floor["class_kl"] < 0.05 < noise["class_kl"]
    assert 0.7 < floor["density"] < 1.3 and floor["knn_coverage"] > 0.8  # real vs real: matched
    assert noise["density"] < 0.1 and noise["knn_coverage"] < 0.2


@pytest.mark.slow
def test_the_floor_is_cached_by_classifier_hash_and_n(digits_evaluator, tmp_path, monkeypatch):
    monkeypatch.setenv("GANEXP_CACHE_DIR", str(tmp_path))
    first = digits_evaluator.floor(300)
    files = list(tmp_path.glob("floor-digits-*-300-v*.json"))
    assert len(files) == 1 and digits_evaluator.info["classifier"]["sha256"][:16] in files[0].name
    monkeypatch.setattr(digits_evaluator, "score", lambda *_: pytest.fail("the cached floor was scored again"))
    assert digits_evaluator.floor(300) == first  # read back, the same numbers
    with pytest.raises(pytest.fail.Exception):
        digits_evaluator.floor(301)  # another n is another floor


@pytest.mark.slow
def test_one_class_of_real_digits_covers_one_mode(digits_evaluator):
    images, labels = clf.load_split("digits", train=True)
    threes = images[labels == 3]
    scores = digits_evaluator.score(threes)
    assert scores["coverage"] == 1
    assert scores["is"] == pytest.approx(1.0, abs=0.1)
    assert scores["class_kl"] == pytest.approx(math.log(10), rel=0.1)  # the real histogram is near uniform


@pytest.mark.slow
def test_score_many_is_score_of_each_set(digits_evaluator):
    """A stack's members scored in one classifier call get exactly the numbers each gets scored alone."""
    images, _ = clf.load_split("digits", train=True)
    sets = [images[:400], images[400:1000], images[1000:1400]]
    before = torch.random.get_rng_state()
    together = digits_evaluator.score_many(sets, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)  # KID's and IS's draws leave the caller's RNG alone
    alone = []
    for s in sets:
        torch.manual_seed(5)  # seeded by hand, then scored alone
        alone.append(digits_evaluator.score(s))
    assert together == alone and together[0] != together[1]


def test_evaluator_rejects_wrong_samples(digits_evaluator):
    with pytest.raises(ConfigError, match=r"samples are \[1, 28, 28\]-shaped but digits images are \[1, 8, 8\]"):
        digits_evaluator.score(torch.zeros(20, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="must be uint8"):
        digits_evaluator.score(torch.zeros(20, 1, 8, 8))


@pytest.mark.slow
def test_an_evaluation_is_repeatable_and_leaves_training_random_numbers_alone(cfg_factory):
    """EvalCallback.evaluate: the same generator scores the same every time (KID's subsets and IS's splits
    seeded), and the global RNG that training draws dropout masks from is where it was."""
    from ganexp.metrics.callback import EvalCallback
    from tests.helpers import train_module

    module = train_module(cfg_factory("data=digits", "model=mlp_small", "trainer.max_epochs=1",
                                      "trainer.limit_train_batches=2", "eval.n=500", "eval.n_final=500"))
    callback = next(c for c in module.trainer.callbacks if isinstance(c, EvalCallback))
    torch.manual_seed(3)
    before = torch.random.get_rng_state()
    first = callback.evaluate(module.eval_generator, module, 500)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.randn(100)  # training goes on between two evaluations
    assert callback.evaluate(module.eval_generator, module, 500) == first
