"""ganexp.sample's --truncation and --walk on a run trained for two iterations: numbers, frames, refusals."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from ganexp import sample
from ganexp.errors import ConfigError
from ganexp.gan.noise import LatentPrior
from ganexp.io.files import load_generator
from tests.helpers import make_cfg
from train import train

TINY = ["eval=none", "logger=none", "callbacks=default", "image_every=0", "trainer.limit_train_batches=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A digits run of two iterations."""
    root = tmp_path_factory.mktemp("runs")
    train(make_cfg(root / "normal", *TINY, "model=mlp_small"))
    return root


@pytest.mark.parametrize("t", [0.7, 0.1, 2.0])
def test_truncated_latents_are_a_normal_cut_at_t(t):
    z = LatentPrior("normal", 100).truncated(2000, t, torch.Generator().manual_seed(0))
    assert z.shape == (2000, 100) and z.abs().max() <= t
    phi, cdf = math.exp(-t * t / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(t / math.sqrt(2)))
    var = 1 - 2 * t * phi / (2 * cdf - 1)  # a standard normal's variance on [-t, t]
    assert z.var().item() == pytest.approx(var, rel=0.02)
    assert z.abs().min() < t / 1000  # drawn over the whole interval, not pushed to its ends


def test_truncation_reaches_the_samples_and_refuses_what_it_cannot_do(runs, tmp_path, capsys):
    out = tmp_path / "t.npz"
    assert sample.main([str(runs / "normal"), "--n", "16", "--truncation", "0.5", "--out", str(out)]) == 0
    generator, config, _ = load_generator(runs / "normal")
    z = sample.latents(config, 16, truncation=0.5)
    assert z.abs().max() <= 0.5 and not torch.equal(z, sample.latents(config, 16))
    expected = sample.to_uint8(generator(z), sample.value_range(config)).numpy()
    assert np.array_equal(np.load(out)["images"], expected)  # the file holds G of the truncated latents
    capsys.readouterr()
    for t, words in (("0", "--truncation=0.0 is out of range; use a number > 0"),
                     ("-1", "--truncation=-1.0 is out of range")):
        assert sample.main([str(runs / "normal"), "--truncation", t, "--out", str(tmp_path / "no.png")]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
    assert not (tmp_path / "no.png").exists()
    with pytest.raises(ConfigError, match="was trained with noise.prior=uniform; drop --truncation"):
        LatentPrior("uniform", 8).truncated(4, 0.7)


def test_slerp_keeps_its_endpoints_and_the_norm_between_unit_vectors():
    a, b = torch.nn.functional.normalize(torch.randn(5, 7, generator=torch.Generator().manual_seed(0)), dim=1).unbind(0)[:2]
    a, b = a[None], b[None]
    assert torch.equal(sample.slerp(a, b, 0.0), a)
    torch.testing.assert_close(sample.slerp(a, b, 1.0), b)
    for t in (0.25, 0.5, 0.9):
        assert sample.slerp(a, b, t).norm().item() == pytest.approx(1.0, abs=1e-6)  # on the sphere, not inside it
    angle = torch.arccos((a * b).sum())
    torch.testing.assert_close(torch.arccos((a * sample.slerp(a, b, 0.25)).sum()), angle / 4)  # even steps
    assert torch.equal(sample.slerp(a, a, 0.3), a)  # parallel: a straight line, no 0/0


@pytest.mark.parametrize("steps, points", [(3, 2), (2, 4)])
def test_a_walk_has_points_times_steps_frames_and_passes_through_its_points(steps, points, runs, tmp_path):
    out = tmp_path / "walk.gif"
    args = ["--n", "4", "--walk", str(steps), "--points", str(points), "--seed", "3"]
    assert sample.main([str(runs / "normal"), *args, "--out", str(out)]) == 0
    frames = [np.array(f.convert("L")) for f in ImageSequence.Iterator(Image.open(out))]
    assert len(frames) == points * steps
    generator, config, _ = load_generator(runs / "normal")
    fixed = sample.latents(config, points * 4, seed=3).view(points, 4, -1)
    for p in range(points):  # frame p·steps is point p's grid, exactly (grey levels survive a GIF)
        expected = sample.grid(sample.generate(generator, fixed[p]), config)[..., 0].numpy()
        assert np.array_equal(frames[p * steps], expected)
        assert not np.array_equal(frames[p * steps + 1], expected)  # and then it moves on
    assert frames[0].shape == (2 * 10 + 2, 2 * 10 + 2)  # a 2 × 2 grid of 8 × 8 images, 2 px apart


@pytest.mark.parametrize("args, words", [
    (["--walk", "3", "--out", "w.png"], "--out w.png: give a file name ending in .gif or .mp4"),
    (["--out", "w.gif"], "--out w.gif: give a file name ending in .png or .npz"),
    (["--walk", "0", "--out", "w.gif"], "--walk 0: give the number of frames"),
    (["--walk", "2", "--points", "1", "--out", "w.gif"], "--points 1: a walk needs 2 or more fixed points"),
    (["--points", "3", "--out", "w.png"], "give --walk K too"),
    (["--walk", "2", "--n", "1000000000", "--out", "w.gif"], "give --n"),
])
def test_bad_walks_are_one_line_and_write_nothing(args, words, runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sample.main([str(runs / "normal"), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_an_mp4_without_imageio_ffmpeg_names_the_extra(runs, tmp_path, capsys, monkeypatch):
    real = sample.importlib.util.find_spec
    monkeypatch.setattr(sample.importlib.util, "find_spec", lambda name: None if name == "imageio_ffmpeg" else real(name))
    assert sample.main([str(runs / "normal"), "--walk", "2", "--out", str(tmp_path / "w.mp4")]) == 2
    assert 'an .mp4 needs imageio-ffmpeg (pip install -e ".[video]"); or give a .gif' in capsys.readouterr().err
    assert not (tmp_path / "w.mp4").exists()


def test_an_mp4_walk_where_imageio_ffmpeg_is_installed(runs, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    out = tmp_path / "w.mp4"  # as a user runs it: ffmpeg is a process of its own
    done = subprocess.run([sys.executable, "-m", "ganexp.sample", str(runs / "normal"), "--n", "4", "--walk", "3",
                           "--points", "2", "--out", str(out)], capture_output=True, text=True, timeout=300, check=False,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(out))
    try:
        meta = next(reader)
        assert meta["size"] == (22, 22) and sum(1 for _ in reader) == 6
    finally:
        reader.close()


def test_a_walk_of_toy_points_is_refused(tmp_path, capsys):
    train(make_cfg(tmp_path / "toy", *TINY, "data=toy", "model=toy_mlp", "trainer.limit_train_batches=1"))
    assert sample.main([str(tmp_path / "toy"), "--walk", "2", "--out", str(tmp_path / "w.gif")]) == 2
    assert "--walk makes a film of image grids" in capsys.readouterr().err and not (tmp_path / "w.gif").exists()
