"""Evaluator: scores generated samples against one dataset's test split, with the protocol recorded.

Images: the features of generated images (quantized to uint8 like the real ones) against the reference's, in the
feature space eval.features picks: the domain classifier's (MNIST-like data, against the whole test split) or
InceptionV3's (ganexp/metrics/inception.py; against the test split of labelled data, else the images the GAN
trains on). Toy 2-D data: scores against fresh samples of the true distribution, in the standardized
space (`swd`) and in data units (`modes`, `hq`; `residual` for quadratic). The real-vs-real floor scores n real
*train* images (or fresh toy points) as a generator's n samples are scored. One Evaluator serves every run of
a process on the same data (`for_datamodule`); fewer samples than the metrics need are a ConfigError.
"""
from __future__ import annotations

import hashlib

import torch
from torch import Tensor

import ganexp
from ganexp.io import writes
from ganexp.data.base import quantize
from ganexp.data.toy import mode_centers, quadratic_residual, sample_toy
from ganexp.errors import ConfigError, shown
from ganexp.io.files import BadFile, read_json
from ganexp.metrics.classifier import LABELLED, cache_dir, load_classifier, load_split
from ganexp.metrics.inception import MAX_REAL, load_inception
from ganexp.metrics.scores import (IMAGE_METRICS, INCEPTION_METRICS, image_scores, min_samples, mode_scores,
                                   require_samples, sorted_projections)

MAX_FLOOR_BYTES = 64 << 10  # a cached floor is ~200 bytes of JSON
_SHARED: dict[tuple, Evaluator] = {}  # one per data and device in a process: a sweep's jobs, a stack's members
FEATURES = ("auto", "classifier", "inception")  # eval.features
KID_SUBSETS = 100  # torch-fidelity's and torchmetrics' default for Inception KID (ganexp's classifier uses 50)


def feature_space(features: str, dataset: str | None) -> str:
    """What eval.features means for a dataset (its metrics_name): toy data has its own scores; `auto` is the
    domain classifier for MNIST-like data (pytorch-fid#12 advises against Inception there), Inception elsewhere."""
    if features not in FEATURES:
        raise ConfigError(f"eval.features={shown(str(features))} is not one of {', '.join(FEATURES)}")
    if dataset == "toy":
        if features != "auto":
            raise ConfigError(f"eval.features={features} is for images; toy data has its own scores "
                              "(eval.features=auto)")
        return "toy"
    if features == "auto":
        return "classifier" if dataset in LABELLED else "inception"
    if features == "classifier" and dataset not in LABELLED:
        raise ConfigError(f"eval.features=classifier needs a labelled dataset ({', '.join(LABELLED)}); "
                          "use eval.features=inception (or auto)")
    return features


def metrics_of(space: str, toy_dist: str | None = None) -> list[str]:
    """The metric names scored in a feature space."""
    if space == "toy":
        return ["swd", "residual"] if toy_dist == "quadratic" else ["swd", "modes", "hq"]
    return list(INCEPTION_METRICS if space == "inception" else IMAGE_METRICS)


class Evaluator:
    def __init__(self, dataset: str, root=None, toy=None, device="cpu", log=print, features: str = "auto",
                 weights: str | None = None, real: Tensor | None = None, split: str = "train"):
        """`real`: the reference uint8 images of data without a test split of its own (image folders, CIFAR-10),
        scored in Inception features; labelled data is scored against its test split."""
        self.dataset, self.toy, self.device, self.log = dataset, toy, torch.device(device), log
        self._floors: dict[int, dict[str, float]] = {}
        self.space = feature_space(features, dataset if real is None else None)
        self.metrics = metrics_of(self.space, getattr(toy, "dist", None))
        if self.space == "toy":
            self.monitor, self.unit = "swd", "points"
            self.info = {"dataset": f"toy/{toy.dist}", "split": "fresh samples of the true distribution"}
            self._reference = {}
            return
        self.monitor, self.unit, self.root = "fid", "images", root
        self._train_images: Tensor | None = None
        if self.space == "inception":
            self._floor_from_reference = real is not None  # no held-out images: the floor is n of the reference's
            if real is None:
                real, _ = load_split(dataset, train=False, root=root)
                split = "test"
            subset = None
            if len(real) > MAX_REAL:  # a paper's reference count; the same seeded subset every time
                subset = f"{MAX_REAL} of {len(real)}, torch.randperm with seed 0"
                real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:MAX_REAL]]
            require_samples(len(real), self.metrics, "reference images")  # k-NN radii, covariances: as samples
            self.shape, self.inception = tuple(real.shape[1:]), load_inception(weights)
            self.real_features, self.real_logits, data_sha256 = self.inception.reference(real, self.device, log)
            # what makes two numbers comparable: the images' size (data.size, CelebA's crop) and the very images
            self.info = {"dataset": dataset, "split": split, "n_real": len(real), "reference_subset": subset,
                         "images": list(self.shape), "reference_sha256": data_sha256, "features": "inception",
                         "inception": self.inception.protocol(),
                         "kid": f"{KID_SUBSETS} subsets of min(1000, n) (torch-fidelity's)"}
            self.key = f"inception-{self.inception.sha256[:16]}-{data_sha256[:16]}"
            return
        test_images, _ = load_split(dataset, train=False, root=root)
        unusable = None
        for _ in range(2):  # weights that pass every check of the file can still overflow; FID's eig then crashes
            self.classifier, clf = load_classifier(dataset, root=root, log=log, unusable=unusable)
            self.real_features, self.real_logits = self.classifier.to(self.device).embed(test_images)
            if self.real_features.isfinite().all() and self.real_logits.isfinite().all():
                break
            unusable = (clf["sha256"], "gives non-finite features on the test split")
        else:
            raise ConfigError(f"the {dataset} classifier {clf['path']} gives non-finite features on the test "
                              "split even retrained; delete it and try again")
        self.shape = tuple(self.classifier.shape)
        self.info = {
            "dataset": dataset, "split": "test", "n_real": len(test_images), "features": "classifier",
            "classifier": {"sha256": clf["sha256"], "test_accuracy": clf["test_accuracy"], "arch": clf["arch"]},
        }
        self.key = self.info["classifier"]["sha256"][:16]
        self._floor_from_reference = False

    @classmethod
    def for_datamodule(cls, datamodule, device="cpu", log=print, features: str = "auto",
                       weights: str | None = None) -> Evaluator:
        name = getattr(datamodule, "metrics_name", None)
        space = feature_space(features, name)
        root, real, split = getattr(datamodule, "root", None), None, "train"
        if name == "toy":  # what the toy scores read from the datamodule
            key = (name, datamodule.dist, bool(datamodule.standardize), *datamodule.mean.tolist(),
                   *datamodule.std.tolist())
        elif name in LABELLED:
            key = (name, str(root), str(cache_dir()), space, weights)  # the classifier read from that cache
        else:  # the images it trains on are the reference (recorded as their split)
            datamodule.setup("fit")
            real = quantize(datamodule.train_data, datamodule.value_range)
            name = type(datamodule).__name__.removesuffix("DataModule").lower()
            split = str(getattr(datamodule, "split", "train"))
            key = (name, split, hashlib.sha256(real.numpy().tobytes()).hexdigest(), str(cache_dir()), weights)
        key += (str(torch.device(device)),)
        if key not in _SHARED:
            _SHARED[key] = cls(name, root=root, toy=datamodule if name == "toy" else None, device=device, log=log,
                               features=features, weights=weights, real=real, split=split)
        return _SHARED[key]

    @property
    def min_samples(self) -> int:
        """The fewest samples that score() and floor() accept for this data."""
        return min_samples(self.metrics)

    def score(self, samples: Tensor) -> dict[str, float]:
        """Scores of generated samples: uint8 images [N, C, H, W], or toy points [N, 2] as the model outputs them;
        ConfigError for fewer than `min_samples`."""
        return self.score_many([samples])[0]

    def score_many(self, samples: list[Tensor], seed: int | None = None) -> list[dict[str, float]]:
        """score() of several generators' samples (a stack's members), images through the classifier in one call;
        `seed` seeds the CPU generator before each set's scores, under a forked RNG."""
        for s in samples:
            if self.dataset != "toy" and s.dtype != torch.uint8:
                raise ConfigError("images to score must be uint8 (use quantize())")
            if self.dataset != "toy" and tuple(s.shape[1:]) != self.shape:
                raise ConfigError(f"samples are {list(s.shape[1:])}-shaped but {self.dataset} images are "
                                  f"{list(self.shape)}")
            require_samples(len(s), self.metrics, self.unit)
        if self.dataset == "toy":
            return [self._toy_scores(s.detach().float().cpu()) for s in samples]
        if self.space == "inception":
            features, logits = self.inception.embed(torch.cat(samples), device=self.device)
        else:
            features, logits = self.classifier.embed(torch.cat(samples))
        sizes = [len(s) for s in samples]
        scores = []
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            for f, l in zip(features.split(sizes), logits.split(sizes)):
                if seed is not None:  # the CPU generator alone (features are on the CPU): a GPU's stays as it was
                    torch.default_generator.manual_seed(seed)
                classes = self.real_logits if self.space == "classifier" else None  # Inception's 1008: no coverage
                scores.append(image_scores(self.real_features, classes, f, l,
                                           kid_subsets=KID_SUBSETS if self.space == "inception" else 50))
        return scores

    def floor(self, n: int) -> dict[str, float]:
        """The real-vs-real floor: n real samples not in the reference, scored like generated ones. Images: cached
        beside the classifier, keyed by its hash and n. ConfigError for n below `min_samples`, as score()."""
        require_samples(n, self.metrics, self.unit)
        if n not in self._floors:
            self._floors[n] = self._floor(n) if self.dataset == "toy" else self._cached_floor(n)
        return dict(self._floors[n])

    def _cached_floor(self, n: int) -> dict[str, float]:
        key = f"floor-{self.dataset}-{self.key}-{n}-v{ganexp.__version__}.json"
        path = cache_dir() / key
        try:
            cached, problem = read_json(path, max_bytes=MAX_FLOOR_BYTES), None
        except BadFile as err:
            cached, problem = None, str(err)
        if cached is not None:
            if isinstance(cached, dict) and set(cached) == set(self.metrics) and all(  # (the bound keeps out NaN, inf)
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1e12 for v in cached.values()):
                return cached
            problem = f"{path} is not a floor of {', '.join(self.metrics)} (finite numbers >= 0)"
        if problem:  # a shared cache: a damaged or crafted file is never used, only replaced
            self.log(f"metrics: {problem}; computing the floor again into a fresh file")
        floor = self._floor(n)
        try:
            writes.replace_json(path, floor)  # parallel jobs may race: both write the same numbers
        except OSError as err:
            self.log(f"metrics: cannot cache the floor in {path.parent} ({err.strerror or err}); "
                     "it is computed again at each start")
        return floor

    def _floor(self, n: int) -> dict[str, float]:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(1)  # CPU draws only: a GPU's generator is not forked, so not reseeded
            if self.dataset == "toy":
                return self._toy_scores(self._fresh_toy(n, seed=2))
            if self._floor_from_reference:  # their features are known: no Inception pass
                pick = torch.randperm(len(self.real_features))[:n]
                return image_scores(self.real_features, None, self.real_features[pick], self.real_logits[pick],
                                    kid_subsets=KID_SUBSETS)
            if self._train_images is None:
                self._train_images, _ = load_split(self.dataset, train=True, root=self.root)
            pick = torch.randperm(len(self._train_images))[:n]
            return self.score(self._train_images[pick])

    def protocol(self, **counts: int | str) -> dict:
        """What a number means: dataset, split, sample counts, classifier hash and accuracy, versions."""
        import torchmetrics

        return {**self.info, **counts, "ganexp": ganexp.__version__, "torchmetrics": torchmetrics.__version__}

    # toy data ---------------------------------------------------------------
    def _fresh_toy(self, n: int, seed: int) -> Tensor:
        points, _ = sample_toy(self.toy.dist, n, torch.Generator().manual_seed(10_000 + seed))
        return (points - self.toy.mean) / self.toy.std if self.toy.standardize else points

    def _toy_scores(self, points: Tensor) -> dict[str, float]:
        n = len(points)
        if n not in self._reference:  # the true distribution's side of swd: the same points at every evaluation
            self._reference[n] = sorted_projections(self._fresh_toy(n, seed=1))
        scores = {"swd": float((sorted_projections(points) - self._reference[n]).abs().mean())}
        data_units = points * self.toy.std + self.toy.mean if self.toy.standardize else points
        if self.toy.dist == "quadratic":
            scores["residual"] = quadratic_residual(data_units)
        else:
            scores.update(mode_scores(data_units, *mode_centers(self.toy.dist)))  # (centers, σ)
        return scores
