"""The seed recipes (conf/experiment/) and their figures (ganexp/callbacks/figures.py, callbacks=figures|toy)."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ganexp.callbacks import figures
from ganexp.callbacks import ToyFigures
from ganexp.errors import ConfigError
from tests.helpers import train_module, CONF, data_dir_with
from tests.helpers.rgb_data import write_all
from train import train

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
FEW = ["trainer.limit_train_batches=3", "eval=none", "log_every=1", "image_every=2", "ckpt_every=0"]
PNGS = {"figures": ["curves.png", "progression.png"],
        "toy": ["curves.png", "scatter.png", "decision_surface.png", "feature_space.png"]}


def png_size(path):
    with Image.open(path) as image:
        return image.size


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_trains_three_iterations_and_draws_its_figures(name, cfg_factory, tmp_path):
    extra = ["callbacks.toy.grid=20"] if name == "toy_quadratic" else []
    cfg = cfg_factory(f"experiment={name}", *FEW, *extra)
    if cfg.data._target_.endswith("MNISTDataModule") and data_dir_with("MNIST") is None:
        cfg = cfg_factory(f"experiment={name}", *FEW, "data=digits")  # the recipe on the bundled digits
    if cfg.data._target_.endswith("CIFAR10DataModule"):  # the recipe on a tiny CIFAR-10 in torchvision's layout
        cfg = cfg_factory(f"experiment={name}", *FEW, f"data.root={write_all(tmp_path / 'data')}", "batch_size=8")
    module = train_module(cfg)
    assert module.iteration == 3
    kind = "toy" if "toy" in cfg.callbacks else "figures"
    for png in PNGS[kind]:
        assert (tmp_path / png).stat().st_size > 1000, png
    with open(tmp_path / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2]  # log_every=1
    assert {"loss/d", "loss/g", "d/acc", "grad/g_norm", "grad/d_norm", "epoch"} <= set(rows[0])


@pytest.mark.slow
def test_experiments_set_what_their_seed_says(cfg_factory):
    noise = cfg_factory("experiment=instance_noise")
    assert (noise.noise.instance_sigma, noise.noise.instance_sigma_min, noise.noise.anneal_epochs) == (0.75, 0.05, 10)
    assert list(noise.model.discriminator.hidden) == [512, 256] and noise.batch_size == 50
    vanilla = cfg_factory("experiment=vanilla_gan")
    assert list(vanilla.model.generator.hidden) == [256, 512, 1024] and vanilla.n_fixed == 16
    assert list(vanilla.optimizer.betas) == [0.9, 0.999] and vanilla.batch_size == 100
    toy = cfg_factory("experiment=toy_quadratic")
    assert list(toy.model.discriminator.hidden) == [16, 16, 2] and toy.noise.latent_dim == 2
    assert toy.optimizer.d._target_ == "torch.optim.RMSprop" and toy.optimizer.lr == 1e-3
    assert toy.optimizer.d.alpha == 0.9 and toy.model.discriminator.linear_features and toy.data.dist == "quadratic"
    smooth = cfg_factory("experiment=label_smoothing")
    assert smooth.loss.label_smoothing == 0.1 and smooth.noise.prior == "uniform" and smooth.optimizer.lr == 2e-3
    original = cfg_factory("experiment=original_gan")
    assert original.model.generator.activation == "relu" and original.model.generator.init == "kaiming"
    assert list(original.data.value_range) == [0, 1] and original.d_steps == 1


@pytest.mark.slow
def test_figure_files_have_their_documented_pixel_sizes(cfg_factory, tmp_path):
    train(cfg_factory("callbacks=figures", "model=mlp_small", *FEW))  # digits, 3 iterations, 1 epoch
    assert png_size(tmp_path / "curves.png") == (1500, 400)
    # rows: the untrained G and the end of epoch 1; 8 samples + 1.5 cells of labels, 0.5 cell margin
    cell = figures.PROGRESSION_CELL * figures.DPI
    assert png_size(tmp_path / "progression.png") == (round(9.5 * cell), round(2.5 * cell))
    images = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload().Tags()["images"]
    assert {"figures/curves", "figures/progression", "samples/fake"} <= set(images)


@pytest.mark.slow
def test_toy_figures_have_their_sizes_and_a_tensorboard_figure_per_snapshot(cfg_factory, tmp_path):
    cfg = cfg_factory("experiment=toy_quadratic", *FEW, "callbacks.toy.grid=20", "callbacks.toy.every=1")
    module = train_module(cfg)
    panel = figures.SQUARE_PANEL * figures.DPI
    # snapshots after iterations 1, 2 and 3 (every=1): three panels side by side
    assert png_size(tmp_path / "scatter.png") == (3 * panel, panel)
    assert png_size(tmp_path / "feature_space.png") == (3 * panel, panel)
    assert png_size(tmp_path / "decision_surface.png") == (round(1.25 * panel), panel)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    for tag in ("figures/feature_space", "figures/decision_surface"):
        assert [e.step for e in events.Images(tag)] == [1, 2, 3]  # one figure per snapshot
    scatter = events.Images("samples/scatter")  # SampleGrid's snapshots: the recipe's image_every=2, and the end
    assert [(e.step, e.width, e.height) for e in scatter] == [(2, panel, panel), (3, panel, panel)]
    assert module.iteration == 3


def test_scatter_snapshots_redraw_only_the_generated_points():
    """A snapshot drawn after others is the picture a fresh figure draws of those points: nothing of the
    earlier generated points stays, the real points and legend are there each time."""
    rng = np.random.default_rng(0)
    real = rng.normal(size=(500, 2))
    a, b = rng.normal(size=(300, 2)) + 4, rng.normal(size=(300, 2)) - 4
    live = figures.ScatterSnapshots(real)
    first = live.image("iteration 1", a)
    second = live.image("iteration 2", b)
    assert first.shape == second.shape == (3, 400, 400) and first.dtype == np.uint8
    assert np.array_equal(second, figures.ScatterSnapshots(real).image("iteration 2", b))
    assert (first != second).any(axis=0).mean() > 0.01  # the points (and limits) moved: > 1 % of the pixels
    assert np.array_equal(live.image("iteration 1", a), first)


def test_scatter_snapshots_keep_their_limits_while_the_points_fit_and_leave_no_trace():
    """Points that fit in the axes (and fill half of each) keep the limits: only the generated points, legend
    and title are drawn again, and drawing the first snapshot again gives its picture back exactly."""
    rng = np.random.default_rng(1)
    real = rng.normal(size=(500, 2))
    a, inside, far, small = (rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) * 0.7,
                             rng.normal(size=(300, 2)) * 6, rng.normal(size=(300, 2)) * 0.3)
    live = figures.ScatterSnapshots(real)
    first = live.image("iteration 1", a)
    limits = live.limits
    second = live.image("iteration 2", inside)
    assert live.limits == limits and (first != second).any(axis=0).mean() > 0.002
    assert np.array_equal(live.image("iteration 1", a), first)  # nothing of `inside` or its title stays
    x0, x1, y0, y1 = limits
    middle = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    edge = middle + 0.99 * (np.array([[x0, y0], [x1, y1]]) - middle)  # just inside two corners: in the margin band
    live.image("iteration 2", edge)  # inside the axes, though bounds(real, edge) would be wider: kept
    assert live.limits == limits and figures.bounds(real, edge) != limits
    live.image("iteration 3", far)  # beyond the limits: new ones
    assert live.limits == figures.bounds(real, far)
    live.image("iteration 4", small)  # fits, but would fill < half of each axis: tight limits again
    assert live.limits == figures.bounds(real, small)


def test_scatter_snapshots_legend_covers_no_point():
    """The legend is drawn above the axes (with the background, once per limits), never over the points."""
    rng = np.random.default_rng(2)
    live = figures.ScatterSnapshots(rng.normal(size=(200, 2)))
    live.image("iteration 1", rng.normal(size=(200, 2)))
    renderer = live.canvas.get_renderer()
    legend, axes = live.ax.get_legend().get_window_extent(renderer), live.ax.get_window_extent(renderer)
    assert legend.y0 >= axes.y1 - 1 and legend.x1 <= axes.x1 + 1


@pytest.mark.slow
def test_feature_space_after_one_generator_update_leaves_training_untouched(cfg_factory, tmp_path):
    cfg = cfg_factory("experiment=toy_quadratic", *FEW, "callbacks.toy.grid=10", "callbacks.toy.every=0")
    module = train_module(cfg)
    opt_g = module.optimizers()[0].optimizer
    before = {k: v.clone() for k, v in module.generator.state_dict().items()}
    g_state = {i: {k: v.clone() for k, v in st.items()} for i, st in opt_g.state_dict()["state"].items()}
    d_grads = [p.grad.clone() for p in module.discriminator.parameters()]
    callback = next(c for c in module.trainer.callbacks if isinstance(c, ToyFigures))
    callback.snapshot(module.trainer, module)
    snap = callback.snapshots[-1]
    assert all(torch.equal(before[k], v) for k, v in module.generator.state_dict().items())
    after = opt_g.state_dict()["state"]  # RMSprop's step and square_avg: the copy stepped, not the real one
    assert all(torch.equal(g_state[i][k], after[i][k]) for i in g_state for k in g_state[i])
    assert all(torch.equal(g, p.grad) for g, p in zip(d_grads, module.discriminator.parameters()))
    assert snap["real_f"].shape == snap["before_f"].shape == snap["after_f"].shape == (1000, 2)
    assert not torch.equal(snap["before_f"], snap["after_f"])  # one G step moved the generated points


def test_feature_space_refuses_a_discriminator_without_a_2d_feature_layer(cfg_factory):
    cfg = cfg_factory("data=toy", "callbacks=toy", "model=mlp", *FEW)
    with pytest.raises(ConfigError, match=r"MLPDiscriminator's feature layer is 256-d.*model=toy_mlp"):
        train(cfg)


def test_toy_figures_refuse_image_data(cfg_factory):
    with pytest.raises(ConfigError, match=r"callbacks=toy draws 2-d points, but the data is \[1, 8, 8\]"):
        train(cfg_factory("callbacks=toy", "model=mlp_small", *FEW))


@pytest.mark.slow
def test_a_resumed_run_keeps_its_curves_and_progression_rows(cfg_factory, tmp_path):
    first = cfg_factory("callbacks=figures", "model=mlp_small", "trainer.limit_train_batches=3", "eval=none",
                        "log_every=1", "trainer.max_epochs=1")
    train(first)
    resumed = cfg_factory("callbacks=figures", "model=mlp_small", "trainer.limit_train_batches=3", "eval=none",
                          "log_every=1", "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}")
    module = train_module(resumed)
    assert module.iteration == 6
    with open(tmp_path / "curves.csv") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == [0, 1, 2, 3, 4, 5]  # both halves, loaded weights_only
    progression = next(c for c in module.trainer.callbacks if type(c).__name__ == "ImageProgression")
    assert progression.iterations == [0, 3, 6]  # untrained G, end of epoch 1, end of epoch 2


def test_sample_cli_draws_toy_points_as_a_scatter_png(cfg_factory, tmp_path):
    from ganexp.sample import main as sample_main

    train(cfg_factory("experiment=toy_quadratic", *FEW, "callbacks=default"))
    assert sample_main([str(tmp_path), "--n", "50", "--out", str(tmp_path / "points.png")]) == 0
    panel = figures.SQUARE_PANEL * figures.DPI
    assert png_size(tmp_path / "points.png") == (panel, panel)  # one scatter panel
