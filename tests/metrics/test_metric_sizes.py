"""Too few samples: every metric declares the fewest it needs; fewer is one line, never a number."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ganexp import evaluate
from ganexp.data.toy import ToyDataModule, sample_toy
from ganexp.errors import ConfigError
from ganexp.metrics.evaluator import Evaluator
from ganexp.metrics.scores import IMAGE_METRICS, image_scores, kid, min_samples, require_samples

IMAGES = min_samples(IMAGE_METRICS)


@pytest.fixture(scope="module")
def digits_evaluator():
    return Evaluator("digits", log=lambda *_: None)


def npz(path, n, seed=0):
    np.savez(path, images=np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8))
    return str(path)


def test_the_registry_holds_each_metrics_minimum():
    assert IMAGE_METRICS["kid"].min_samples == 50 and IMAGE_METRICS["fid"].min_samples == 2
    assert IMAGE_METRICS["kid"].higher_is_better is False and IMAGE_METRICS["precision"].higher_is_better is True
    assert IMAGES == 100 and min_samples(["fid", "kid"]) == 50
    assert min_samples(["swd", "residual"]) == 100 and min_samples(["swd", "modes", "hq"]) == 250
    require_samples(100, IMAGE_METRICS)  # exactly the minimum: no error
    with pytest.raises(ConfigError) as err:
        require_samples(60, IMAGE_METRICS, "images")
    assert str(err.value) == ("60 images cannot carry is (needs >= 100), coverage (needs >= 100), class_kl (needs >= 100), "
                              "precision (needs >= 100), recall (needs >= 100), density (needs >= 100), "
                              "knn_coverage (needs >= 100); give at least 100 images")


@pytest.mark.parametrize("n", [0, 1, 5])
def test_too_few_npz_images_are_one_line_naming_the_minimum(tmp_path, capsys, n):
    path = npz(tmp_path / f"n{n}.npz", n)
    assert evaluate.main([path, "--data", "digits"]) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and "Traceback" not in captured.err and "cannot carry" not in captured.out
    assert err[0].startswith(f"ganexp.evaluate: error: {path}: {n} images cannot carry ")
    assert err[0].endswith("give at least 100 images") and "kid (needs >= 50)" in err[0]
    assert ("fid (needs >= 2)" in err[0]) == (n < 2)


def test_exactly_the_minimum_passes_and_its_floor_is_not_negative(tmp_path, capsys):
    assert evaluate.main([npz(tmp_path / "min.npz", IMAGES), "--data", "digits", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    scores, floor = result["scores"], result["floor"]
    assert result["protocol"]["n"] == 100 and list(scores) == list(floor) == list(IMAGE_METRICS)
    assert all(value >= 0 for value in floor.values()), floor
    assert floor["coverage"] == 10 and floor["precision"] > 0.7 and floor["fid"] < scores["fid"] / 5
    assert scores["precision"] < 0.5  # noise: at 100 samples precision is no longer ~1.0


def test_kid_below_zero_is_reported_as_zero():
    # 100 and 100: every KID subset holds all samples, so the value does not depend on the RNG
    g = [torch.Generator().manual_seed(s) for s in (0, 5)]
    real, fake = torch.randn(100, 4, generator=g[0]), torch.randn(100, 4, generator=g[1])  # one distribution
    logits = torch.eye(10).repeat(10, 1)
    assert kid(real, fake) == pytest.approx(-0.04226, abs=1e-4)  # the unbiased estimate dips below 0
    scores = image_scores(real, logits, fake, logits)
    assert scores["kid"] == 0.0 and scores["fid"] == pytest.approx(0.1385, abs=1e-3) and scores["class_kl"] == 0.0


def test_evaluator_score_and_floor_refuse_too_few(digits_evaluator):
    images = torch.randint(0, 256, (IMAGES, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=r"^99 images cannot carry is \(needs >= 100\).*give at least 100 images$"):
        digits_evaluator.score(images[:99])
    with pytest.raises(ConfigError, match=r"^5 images cannot carry kid \(needs >= 50\)"):
        digits_evaluator.floor(5)
    assert digits_evaluator.min_samples == 100 and set(digits_evaluator.score(images)) == set(IMAGE_METRICS)


def test_toy_evaluator_refuses_too_few_points():
    evaluator = Evaluator.for_datamodule(ToyDataModule(dist="grid", standardize=False, batch_size=1))
    points, _ = sample_toy("grid", 250, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=r"^249 points cannot carry modes \(needs >= 250\); give at least 250 points$"):
        evaluator.score(points[:249])
    with pytest.raises(ConfigError, match=r"^10 points cannot carry swd \(needs >= 100\), modes"):
        evaluator.floor(10)
    assert evaluator.score(points)["modes"] == 25 and evaluator.floor(250)["modes"] == 25
