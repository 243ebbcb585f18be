"""Evaluator: scores generated samples against one dataset's test split, with the protocol recorded.

Images: the domain classifier's features of generated images (quantized to uint8 like the real ones) against
the whole test split. Toy 2-D data: scores against fresh samples of the true distribution, in the standardized
space (`swd`) and in data units (`modes`, `hq`; `residual` for quadratic). The real-vs-real floor scores n real
*train* images (or fresh toy points) as a generator's n samples are scored. One Evaluator serves every run of
a process on the same data (`for_datamodule`); fewer samples than the metrics need are a ConfigError.
"""
from __future__ import annotations

import torch
from torch import Tensor

import ganexp
from ganexp.io import writes
from ganexp.data.toy import mode_centers, quadratic_residual, sample_toy
from ganexp.errors import ConfigError
from ganexp.io.files import BadFile, read_json
from ganexp.metrics.classifier import LABELLED, cache_dir, load_classifier, load_split
from ganexp.metrics.scores import (IMAGE_METRICS, image_scores, min_samples, mode_scores, require_samples,
                                   sorted_projections)

MAX_FLOOR_BYTES = 64 << 10  # a cached floor is ~200 bytes of JSON
_SHARED: dict[tuple, Evaluator] = {}  # one per data and device in a process: a sweep's jobs, a stack's members


class Evaluator:
    def __init__(self, dataset: str, root=None, toy=None, device="cpu", log=print):
        self.dataset, self.toy, self.device, self.log = dataset, toy, torch.device(device), log
        self._floors: dict[int, dict[str, float]] = {}
        if dataset == "toy":
            self.monitor, self.unit = "swd", "points"
            self.metrics = ["swd", "residual"] if toy.dist == "quadratic" else ["swd", "modes", "hq"]
            self.info = {"dataset": f"toy/{toy.dist}", "split": "fresh samples of the true distribution"}
            self._reference = {}
            return
        if dataset not in LABELLED:
            raise ConfigError(f"no metrics for data '{dataset}': they need a labelled dataset "
                              f"({', '.join(LABELLED)}) or toy data; set eval=none")
        self.monitor, self.unit, self.metrics = "fid", "images", list(IMAGE_METRICS)
        self.root = root
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
        self.info = {
            "dataset": dataset, "split": "test", "n_real": len(test_images),
            "classifier": {"sha256": clf["sha256"], "test_accuracy": clf["test_accuracy"], "arch": clf["arch"]},
        }
        self._train_images: Tensor | None = None

    @classmethod
    def for_datamodule(cls, datamodule, device="cpu", log=print) -> Evaluator:
        name = getattr(datamodule, "metrics_name", None)
        if name is None:
            raise ConfigError(f"no metrics for {type(datamodule).__name__}: they need a labelled dataset "
                              f"({', '.join(LABELLED)}) or toy data; set eval=none")
        root = getattr(datamodule, "root", None)
        if name == "toy":  # what the toy scores read from the datamodule
            key = (name, datamodule.dist, bool(datamodule.standardize), *datamodule.mean.tolist(),
                   *datamodule.std.tolist())
        else:
            key = (name, str(root), str(cache_dir()))  # the classifier read from that cache
        key += (str(torch.device(device)),)
        if key not in _SHARED:
            _SHARED[key] = cls(name, root=root, toy=datamodule if name == "toy" else None, device=device, log=log)
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
            if self.dataset != "toy" and tuple(s.shape[1:]) != tuple(self.classifier.shape):
                raise ConfigError(f"samples are {list(s.shape[1:])}-shaped but {self.dataset} images are "
                                  f"{list(self.classifier.shape)}")
            require_samples(len(s), self.metrics, self.unit)
        if self.dataset == "toy":
            return [self._toy_scores(s.detach().float().cpu()) for s in samples]
        features, logits = self.classifier.embed(torch.cat(samples))
        sizes = [len(s) for s in samples]
        scores = []
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            for f, l in zip(features.split(sizes), logits.split(sizes)):
                if seed is not None:  # the CPU generator alone (features are on the CPU): a GPU's stays as it was
                    torch.default_generator.manual_seed(seed)
                scores.append(image_scores(self.real_features, self.real_logits, f, l))
        return scores

    def floor(self, n: int) -> dict[str, float]:
        """The real-vs-real floor: n real samples not in the reference, scored like generated ones. Images: cached
        beside the classifier, keyed by its hash and n. ConfigError for n below `min_samples`, as score()."""
        require_samples(n, self.metrics, self.unit)
        if n not in self._floors:
            self._floors[n] = self._floor(n) if self.dataset == "toy" else self._cached_floor(n)
        return dict(self._floors[n])

    def _cached_floor(self, n: int) -> dict[str, float]:
        key = f"floor-{self.dataset}-{self.info['classifier']['sha256'][:16]}-{n}-v{ganexp.__version__}.json"
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
