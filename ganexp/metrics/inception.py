"""InceptionV3 features, the ones papers quote FID / KID / IS in: torch-fidelity's `FeatureExtractorInceptionV3`
(the TF-ported "pt_inception-2015-12-05" graph, which torchmetrics' FID/KID/IS wrap), pool (2048) and unbiased
logits (IS), on uint8 images that it resizes to 299x299 itself as TF1 did (no antialiasing).

Weights, in this order: `eval.inception_weights=PATH`; the torch hub cache ($TORCH_HOME/hub/checkpoints/<FILE_NAME>,
where torch-fidelity keeps it); a download into that cache, its SHA-256 prefix checked. A file named FILE_NAME
must carry the published hash; any other file given by path is used as it is, its SHA-256 recorded (two numbers
compare only when the hashes match). With none of them: one line naming the file, where to put it, the extra.
"""
from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path

import torch
from torch import Tensor

from ganexp.errors import ConfigError, shown
from ganexp.io import writes
from ganexp.metrics.classifier import cache_dir, load_torch, read_bounded, state_hash

# torch-fidelity's URL_INCEPTION_V3 (torch_fidelity/feature_extractor_inceptionv3.py); the name carries the first
# digits of the file's SHA-256, torch.hub's convention (load_state_dict_from_url(check_hash=True) checks them).
FILE_NAME = "weights-inception-2015-12-05-6726825d.pth"
URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{FILE_NAME}"
HASH_PREFIX = "6726825d"
MAX_WEIGHTS_BYTES = 256 << 20  # the file is 91 MiB
MAX_PARAMETERS = 40_000_000  # InceptionV3 has ~24 million
MAX_REAL = 50_000  # reference images (CIFAR-10's train split); cached: 2048 + 1008 float32 each, 611 MB at most
MAX_REFERENCE_BYTES = MAX_REAL * (2048 + 1008) * 4 + (1 << 20)
RECORD = ("features", "logits", "data_sha256", "weights_sha256", "sha256")
EXTRACTOR = "torch-fidelity FeatureExtractorInceptionV3 (pt_inception-2015-12-05): pool 2048 (fid, kid, prdc), " \
            "logits_unbiased (is)"
RESIZE = "uint8 [N, 3, H, W] (grey tiled to 3 channels), bilinear to 299x299 as TF1 (torch-fidelity's own resize)"
INSTALL = 'pip install -e ".[inception]"'


def hub_file() -> Path:
    """Where torch-fidelity's download lands: torch.hub's checkpoints folder ($TORCH_HOME, default ~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FILE_NAME


def unavailable(why: str) -> ConfigError:
    return ConfigError(f"{why}; eval.features=inception needs torch-fidelity ({INSTALL}) and the InceptionV3 weights "
                       f"{FILE_NAME} ({URL}) in {hub_file().parent}/ or at eval.inception_weights=PATH; or use "
                       "eval.features=classifier (MNIST-like data) or eval=none")


def find_weights(given: str | None) -> Path:
    """The weights file to use (given, cached or downloaded), checked only for being there; ConfigError else."""
    try:
        import torch_fidelity  # noqa: F401 - the extractor's home
    except ImportError:
        raise unavailable("torch-fidelity is not installed") from None
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise unavailable(f"eval.inception_weights={shown(str(given))} is not a file")
        return path
    if hub_file().is_file():
        return hub_file()
    from ganexp.data.mnist import reachable

    if not reachable(URL):
        raise unavailable(f"{hub_file()} does not exist and {URL.split('/')[2]} cannot be reached to download it")
    try:
        hub_file().parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL, str(hub_file()), hash_prefix=HASH_PREFIX, progress=False)
    except (OSError, RuntimeError) as err:  # a network error, a full disk, or the hash mismatch
        raise unavailable(f"downloading {URL} failed ({(str(err).splitlines() or [type(err).__name__])[0]})") from None
    return hub_file()


class Inception:
    """The extractor with its weights checked; `embed` gives (pool features [N, 2048], logits_unbiased [N, 1008])."""

    def __init__(self, path: Path):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        data, problem = read_bounded(path, MAX_WEIGHTS_BYTES, "InceptionV3 weights")
        self.sha256 = hashlib.sha256(data).hexdigest() if data is not None else ""
        if problem is None and path.name == FILE_NAME and not self.sha256.startswith(HASH_PREFIX):
            problem = (f"has SHA-256 {self.sha256[:16]}..., not the published {HASH_PREFIX}... "
                       "(a damaged download? delete it)")
        state, problem = (None, problem) if problem else load_torch(data, MAX_WEIGHTS_BYTES, "InceptionV3 weights")
        if problem is None and not (isinstance(state, dict) and all(isinstance(k, str) for k in state) and all(
                isinstance(v, Tensor) and v.layout == torch.strided and v.is_contiguous() for v in state.values())):
            problem = "is not a state_dict of (dense, contiguous) tensors under parameter names"  # an expanded one is any size on 1 number
        if problem is None and sum(v.numel() for v in state.values()) > MAX_PARAMETERS:
            problem = f"holds more than {MAX_PARAMETERS:,} numbers, more than InceptionV3's weights"
        if problem is None and not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
            problem = "holds non-finite weights"
        if problem is None:
            clean = io.BytesIO()
            torch.save(state, clean)  # rebuilt from checked tensors: torch-fidelity loads it with weights_only=False
            clean.seek(0)
            try:
                self.model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                         feature_extractor_weights_path=clean)
            except RuntimeError as err:  # load_state_dict: missing, unexpected or misshapen keys
                problem = f"holds weights of another model ({shown(str(err).splitlines()[0], 120)})"
            else:  # load_state_dict casts silently: int64 "weights" would load as floats
                model_state = self.model.state_dict()
                if wrong := next((k for k, v in state.items() if k in model_state and v.dtype != model_state[k].dtype),
                                 None):
                    problem = f"holds {shown(wrong, 60)} as {state[wrong].dtype}, not {model_state[wrong].dtype}"
        if problem:
            raise unavailable(f"{path} {problem}")
        self.path = path

    @torch.no_grad()
    def embed(self, images: Tensor, batch_size: int = 64, device="cpu") -> tuple[Tensor, Tensor]:
        """(features, logits) of uint8 images [N, 1 or 3, H, W], on the CPU."""
        model = self.model.to(device)
        out = [model(chunk.to(device).expand(-1, 3, -1, -1)) for chunk in images.split(batch_size)]
        return torch.cat([f for f, _ in out]).cpu(), torch.cat([lg for _, lg in out]).cpu()

    def reference(self, real: Tensor, device, log=print) -> tuple[Tensor, Tensor, str]:
        """(features, logits of the reference images, the images' SHA-256): computed once, cached beside the
        classifier keyed by the images' and the weights' hashes; a cached file is data, checked before use."""
        data_sha256 = hashlib.sha256(f"{list(real.shape)}".encode() + real.numpy().tobytes()).hexdigest()
        path = cache_dir() / f"inception-{data_sha256[:16]}-{self.sha256[:16]}.pt"
        data, problem = read_bounded(path, MAX_REFERENCE_BYTES, "reference features")
        record, problem = (None, problem) if problem else load_torch(data, MAX_REFERENCE_BYTES, "reference features")
        if problem is None:
            problem = _check_reference(record, len(real), data_sha256, self.sha256)
        if problem is None:
            return record["features"], record["logits"], data_sha256
        log(f"metrics: {path} {problem}; computing the Inception features of {len(real)} reference images")
        features, logits = self.embed(real, device=device)
        if not (features.isfinite().all() and logits.isfinite().all()):  # nothing cached: the weights are wrong
            raise unavailable(f"{self.path} gives non-finite features for the reference images (weights that "
                              "overflow: not InceptionV3's?)")
        record = {"features": features, "logits": logits, "data_sha256": data_sha256, "weights_sha256": self.sha256,
                  "sha256": state_hash({"features": features, "logits": logits})}
        try:
            writes.replace_with(path, lambda tmp: torch.save(record, tmp))
        except OSError as err:
            log(f"metrics: cannot cache them in {path.parent} ({err.strerror or err}); computed again at each start")
        return features, logits, data_sha256

    def protocol(self) -> dict:
        return {"extractor": EXTRACTOR, "resize": RESIZE, "weights_sha256": self.sha256,
                "published_weights": self.sha256.startswith(HASH_PREFIX), "weights_file": self.path.name}


def _check_reference(record, n: int, data_sha256: str, weights_sha256: str) -> str | None:
    """What is wrong with a cached reference record, or None."""
    if not isinstance(record, dict) or set(record) != set(RECORD):
        return "is not a ganexp reference record"
    if record["data_sha256"] != data_sha256 or record["weights_sha256"] != weights_sha256:
        return "holds the features of other images or weights"
    for key, width in (("features", 2048), ("logits", 1008)):
        t = record[key]
        if not (isinstance(t, Tensor) and t.layout == torch.strided and t.dtype == torch.float32
                and tuple(t.shape) == (n, width)) or not torch.isfinite(t).all():
            return f"does not hold finite float32 [{n}, {width}] {key}"
    if state_hash({"features": record["features"], "logits": record["logits"]}) != record["sha256"]:
        return "does not match its recorded sha256"
    return None


@functools.lru_cache(maxsize=2)
def _load(path: str, size: int, mtime_ns: int) -> Inception:
    return Inception(Path(path))


def load_inception(given: str | None) -> Inception:
    """The extractor for eval.inception_weights (None: cache, then download), built once per file in a process."""
    path = find_weights(given)
    st = path.stat()
    return _load(str(path.resolve()), st.st_size, st.st_mtime_ns)
