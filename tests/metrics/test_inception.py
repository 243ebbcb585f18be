"""eval.features=inception on a few images: random seeded weights in torch-fidelity's key layout (nothing is
downloaded), the numbers against torchmetrics' own FID, the protocol, and the one-line refusals. InceptionV3 at
299x299 takes ~0.6 s an image on 2 CPU cores: every test here feeds it at most a dozen."""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ganexp import evaluate
from ganexp.errors import ConfigError
from ganexp.metrics import inception, scores
from ganexp.metrics.evaluator import Evaluator, feature_space
from tests.helpers import run_train

N = 4  # images a side: enough for k=3 nearest neighbours


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """torch-fidelity's InceptionV3 built without its download, seeded He-normal convolutions (activations stay
    O(1) through the 94 layers), saved as its state_dict."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, *a, **k: None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("weights") / "random-inception.pth"
    torch.save(model.state_dict(), path)
    return path


def few_samples(mp: pytest.MonkeyPatch, tmp_path_factory) -> None:
    """Every image metric scored from N samples (the registry's minima are for real runs), a cache of the module's own."""
    for name, m in scores.IMAGE_METRICS.items():
        mp.setitem(scores.METRICS, name, m._replace(min_samples=2))
    mp.setenv("GANEXP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "inception-cache"))


@pytest.fixture(autouse=True)
def _few_samples(monkeypatch, tmp_path_factory):
    few_samples(monkeypatch, tmp_path_factory)


def images(seed: int, n: int = N, channels: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, 16, 16), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.fixture(scope="module")
def evaluator(weights, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        few_samples(mp, tmp_path_factory)
        return Evaluator("noise", features="inception", weights=str(weights), real=images(1), split="train")


def test_evaluate_cli_scores_a_folder_as_torchmetrics_own_inception_fid_does(weights, evaluator, tmp_path, capsys):
    """End to end: samples made elsewhere (PNGs, lossless) against real images in an .npz, the CLI's JSON."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = tmp_path / "real.npz", tmp_path / "fake"
    np.savez(real, images=images(1).numpy())
    fake.mkdir()
    for i, image in enumerate(images(2)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(fake / f"{i}.png")
    assert evaluate.main([str(fake), "--real", str(real), "--features", "inception", "--inception-weights",
                          str(weights), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert list(got["scores"]) == list(got["floor"]) == list(scores.INCEPTION_METRICS)  # no ImageNet class coverage
    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights), antialias=False)
    fid.update(images(1), real=True)  # antialias=False: torch-fidelity's own resize, as the papers' TF code did
    fid.update(images(2), real=False)
    assert got["scores"]["fid"] == pytest.approx(float(fid.compute()), rel=1e-4)
    assert got["scores"]["fid"] > 0 and got["scores"]["kid"] >= 0 and got["scores"]["is"] >= 1
    protocol = got["protocol"]
    assert protocol["inception"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert protocol["inception"]["published_weights"] is False
    assert "299" in protocol["inception"]["resize"] and "FeatureExtractorInceptionV3" in protocol["inception"]["extractor"]
    assert (protocol["split"], protocol["n_real"], protocol["n"], protocol["features"]) == (str(real), N, N, "inception")
    assert protocol["images"][0] == 3 and protocol["reference_subset"] is None and len(protocol["reference_sha256"]) == 64


def test_reference_features_are_cached_and_a_damaged_cache_is_recomputed(weights, evaluator):
    said = []
    again = Evaluator("noise", features="inception", weights=str(weights), real=images(1), log=said.append)
    assert said == [] and torch.equal(again.real_features, evaluator.real_features)  # no Inception pass
    cache = next(Path(inception.cache_dir()).glob("inception-*.pt"))
    cache.write_bytes(b"not a torch file")
    redone = Evaluator("noise", features="inception", weights=str(weights), real=images(1), log=said.append)
    assert len(said) == 1 and "cannot be read as a torch file" in said[0]
    assert torch.allclose(redone.real_features, evaluator.real_features, atol=1e-5)


def test_grey_images_are_tiled_to_rgb(evaluator):
    grey = images(3, n=1, channels=1)
    features, _ = evaluator.inception.embed(grey)
    assert torch.allclose(features, evaluator.inception.embed(grey.expand(-1, 3, -1, -1).contiguous())[0])


def test_the_file_name_url_and_hash_are_torch_fidelitys():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert inception.URL == URL_INCEPTION_V3
    assert inception.FILE_NAME == URL_INCEPTION_V3.rsplit("/", 1)[1]
    assert inception.HASH_PREFIX == torch.hub.HASH_REGEX.search(inception.FILE_NAME).group(1)  # what torch.hub checks


def test_auto_features_classifier_for_mnist_like_data_inception_elsewhere():
    assert [feature_space("auto", d) for d in ("digits", "mnist", "fashion_mnist", None, "toy")] == \
        ["classifier"] * 3 + ["inception", "toy"]
    with pytest.raises(ConfigError, match="eval.features=classifier needs a labelled dataset"):
        feature_space("classifier", None)


def test_without_torch_fidelity_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import torch_fidelity raises ImportError
    with pytest.raises(ConfigError) as err:
        inception.find_weights(None)
    assert "torch-fidelity is not installed" in str(err.value) and 'pip install -e ".[inception]"' in str(err.value)
    assert "\n" not in str(err.value)


def test_offline_without_weights_one_line_names_file_url_and_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("ganexp.data.mnist.reachable", lambda url, timeout=3.0: False)
    with pytest.raises(ConfigError) as err:
        inception.find_weights(None)
    text = str(err.value)
    assert inception.FILE_NAME in text and inception.URL in text and str(tmp_path / "torch" / "hub" / "checkpoints") in text
    assert "\n" not in text


def _folder(path: Path, n: int, shade: int) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), (shade + 7 * i) % 256, np.uint8)).save(path / f"{i}.png")
    return path


def test_a_wrong_hash_file_in_the_hub_cache_is_refused_in_one_line_before_any_folder(weights, tmp_path):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / inception.FILE_NAME).write_bytes(weights.read_bytes()[:4096])  # a cut-off download: its hash differs
    folder = _folder(tmp_path / "images", 8, 10)
    result = run_train("data=image_folder", f"data.path={folder}", "data.size=8", "batch_size=4",
                       f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120,
                       env={"TORCH_HOME": str(tmp_path / "torch"), "HYDRA_FULL_ERROR": ""})
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not the published 6726825d" in lines[0], lines
    assert inception.FILE_NAME in lines[0] and 'pip install -e ".[inception]"' in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("content, problem", [
    ({"fc.weight": torch.zeros(3, 3)}, "holds weights of another model"),
    ({"fc.weight": torch.full((2,), float("nan"))}, "holds non-finite weights"),
    (b"\x80\x04 not a torch file", "cannot be read as a torch file"),
    ({"fc.weight": torch.zeros(1).expand(2**40)}, "is not a state_dict of (dense, contiguous) tensors"),  # 4 TiB
    ({"w": torch.zeros(41_000_000, dtype=torch.uint8)}, "holds more than 40,000,000 numbers"),
    ({1: torch.zeros(1)}, "is not a state_dict of (dense, contiguous) tensors under parameter names"),
])
def test_weights_that_are_not_inceptions_are_refused_in_one_line(tmp_path, content, problem):
    path = tmp_path / "mine.pth"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    with pytest.raises(ConfigError) as err:
        inception.Inception(path)
    assert f"{path} {problem}" in str(err.value) and "\n" not in str(err.value)


def test_too_few_reference_images_and_weights_that_overflow_are_one_line_and_cache_nothing(weights, tmp_path,
                                                                                             monkeypatch):
    with pytest.raises(ConfigError, match="^1 reference images cannot carry .*; give at least 2 reference images$"):
        Evaluator("noise", features="inception", weights=str(weights), real=images(1, n=1), split="train")
    state = torch.load(weights, weights_only=True)
    state = {k: v * 1e30 if v.is_floating_point() and v.dim() == 4 else v for k, v in state.items()}
    path = tmp_path / "overflow.pth"
    torch.save(state, path)
    monkeypatch.setenv("GANEXP_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=re.escape(f"{path} gives non-finite features for the reference images")):
        Evaluator("noise", features="inception", weights=str(path), real=images(1), split="train")
    assert not list((tmp_path / "cache").glob("inception-*"))


def test_weights_of_the_right_names_and_shapes_but_another_dtype_are_refused(weights, tmp_path):
    state = torch.load(weights, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].to(torch.float64)
    path = tmp_path / "double.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=re.escape(f"{path} holds {key} as torch.float64, not torch.float32")):
        inception.Inception(path)
