"""Files from other people are data: crafted configs are refused before anything is built, and a
resume continues the run in the checkpoint without rewriting what the user has."""
from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ganexp.sweeps import compare

from ganexp import evaluate, export, sample

from ganexp.config import registry
from ganexp.run.build import build_module, plain
from ganexp.errors import ConfigError
from ganexp.io.files import BadFile, read_checkpoint
from ganexp.config.registry import build, check_stored
from ganexp.run.resume import RUN_MARKER, in_place_run, init_weights, resume_config
from tests.helpers import ROOT, make_cfg, run_train

# A run trained with settings that are NOT the defaults, so a resume that silently fell back to
# the defaults would be seen: loss, d_steps, batch size and learning rate all differ.
ORIGINAL = ["loss=minimax", "d_steps=2", "batch_size=32", "optimizer.lr=1e-3", "model=mlp_small", "eval=none",
            "trainer.max_epochs=1", "trainer.limit_train_batches=6", "log_every=2", "image_every=0",
            "trainer.enable_progress_bar=false"]


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) → sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished run folder made by `python train.py` (6 iterations, ~10 s)."""
    cwd = tmp_path_factory.mktemp("original")
    result = run_train(*ORIGINAL, "hydra.run.dir=run", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "run"


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of the finished run, so a test may try to change it."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def stored(finished_run) -> dict:
    return read_checkpoint(finished_run / "checkpoints" / "last.ckpt")["hyper_parameters"]


def put(config: dict, dotted: str, value) -> dict:
    """A deep copy of `config` with `value` at `dotted` (created where missing)."""
    config = copy.deepcopy(config)
    node = config
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return config


# --- 1. configs read from files are data ------------------------------------------------------

VICTIM = "VICTIM"  # replaced by a real file path in each test
CRAFTED = [  # (where, value, the key the refusal must name)
    ("model.generator._target_", "builtins.open", "model.generator._target_"),
    ("model.generator._target_", "pathlib.Path.write_text", "model.generator._target_"),
    ("model.generator._target_", "os.system", "model.generator._target_"),
    ("model.generator._target_", "subprocess.run", "model.generator._target_"),
    ("model.generator._target_", "shutil.rmtree", "model.generator._target_"),
    ("model.generator._target_", "torch.save", "model.generator._target_"),
    ("model.generator._target_", "torch.hub.load", "model.generator._target_"),
    ("model.generator._target_", "torch.nn.Linear", "model.generator._target_"),
    ("model.generator._target_", "ganexp.io.files.read_json", "model.generator._target_"),
    ("model.generator._args_", [VICTIM, "w"], "model.generator._args_"),
    ("model.generator._partial_", True, "model.generator._partial_"),
    ("model.generator._call_", True, "model.generator._call_"),
    ("model.generator._recursive_", False, "model.generator._recursive_"),
    ("model.generator._convert_", "all", "model.generator._convert_"),
    ("model.generator.hidden", {"_target_": "builtins.open", "_args_": [VICTIM, "w"]}, "model.generator.hidden._target_"),
    ("model.generator.hidden", [{"_target_": "pathlib.Path.touch", "self": VICTIM}], "model.generator.hidden[0]._target_"),
    ("data.transform", {"_target_": "builtins.open", "file": VICTIM, "mode": "w"}, "data.transform._target_"),
    ("data._target_", "torch.load", "data._target_"),
    ("noise.prior", {"_target_": "os.remove", "path": VICTIM}, "noise.prior._target_"),
    ("trainer.plugins", [{"_target_": "os.remove", "_args_": [VICTIM]}], "trainer.plugins[0]._target_"),
    ("callbacks.evil", {"_target_": "shutil.copyfile", "src": "/etc/hostname", "dst": VICTIM}, "callbacks.evil._target_"),
    ("optimizer.g._target_", "torch.optim.lr_scheduler.LambdaLR", "optimizer.g._target_"),
    ("_target_", "builtins.exec", "_target_"),
    ("_args_", ["print(1)"], "_args_"),
    ("data.root", "${oc.env:HOME}", "data.root"),
    ("model.generator.hidden", "${now:%H}", "model.generator.hidden"),
]
IDS = [f"{where}={value if isinstance(value, str) else type(value).__name__}" for where, value, _ in CRAFTED]


@pytest.mark.slow
@pytest.mark.parametrize("where, value, key", CRAFTED, ids=IDS)
def test_a_crafted_stored_config_is_refused_naming_the_file_and_the_key(stored, where, value, key):
    crafted = put(stored, where, value)
    with pytest.raises(ConfigError) as err:
        check_stored(crafted, "colleague.ckpt")
    message = str(err.value)
    assert message.startswith("colleague.ckpt: ") and key in message and "\n" not in message
    assert "GANEXP_PARTS" in message  # and how to declare a part of one's own


def test_the_real_stored_config_passes_and_every_part_of_it_builds(stored, tmp_path):
    check_stored(stored, "ok.ckpt")
    cfg = make_cfg(tmp_path, *ORIGINAL)
    module = build_module(cfg)
    assert type(module.generator).__name__ == "MLPGenerator" and module.loss.name == "minimax"


@pytest.mark.parametrize("kind, node, words", [
    ("discriminator", {"_target_": "ganexp.models.mlp.MLPGenerator", "latent_dim": 2, "out_shape": [2]},
     "is a generator, not a discriminator"),
    ("generator", {"latent_dim": 2}, "has no _target_"),
    ("generator", ["ganexp.models.mlp.MLPGenerator"], "not a mapping"),
    ("optimizer", {"_target_": "torch.optim.Adam", "_partial_": True, "lr": {"_target_": "os.getcwd"}}, "lr._target_"),
    ("generator", {"_target_": "ganexp.models.mlp.MLPGenerator", "latent_dim": "x", "out_shape": [2]}, "cannot build"),
])
def test_build_takes_only_a_registered_class_of_the_expected_kind(kind, node, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        build(node, kind, key=kind, source="f.ckpt")


def crafted_checkpoint(finished_run: Path, folder: Path, where: str, value) -> Path:
    checkpoint = torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"] = put(checkpoint["hyper_parameters"], where, value)
    path = folder / "colleague.ckpt"
    torch.save(checkpoint, path)
    return path


def _with_victim(value, victim: Path):
    return json.loads(json.dumps(value).replace(VICTIM, str(victim)))


@pytest.mark.parametrize("where, value, key", [c for c in CRAFTED if VICTIM in json.dumps(c[1])] + [
    ("model.generator._target_", "builtins.open", "model.generator._target_")],
    ids=lambda v: str(v)[:40] if isinstance(v, str) else None)
@pytest.mark.parametrize("cli", ["sample", "evaluate"])
def test_sample_and_evaluate_refuse_a_crafted_checkpoint_and_touch_no_file(finished_run, tmp_path, capsys, where,
                                                                           value, key, cli):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    ckpt = crafted_checkpoint(finished_run, tmp_path, where, _with_victim(value, victim))
    if where == "model.generator._target_":  # open(latent_dim=...) would fail; the args make it truncate
        ckpt = crafted_checkpoint(finished_run, tmp_path, "model.generator", {"_target_": value, "file": str(victim),
                                                                             "mode": "w"})
    before = tree_digest(tmp_path)
    out = tmp_path / "x.png"
    code = (sample.main([str(ckpt), "--n", "4", "--out", str(out)]) if cli == "sample"
            else evaluate.main([str(ckpt), "--n", "10"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(ckpt) in err[0] and key.split("[")[0].split("._")[0] in err[0]
    assert victim.read_text() == "keep me" and tree_digest(tmp_path) == before and not out.exists()


@pytest.mark.slow
def test_a_crafted_checkpoint_from_the_command_line_is_one_line_exit_2(finished_run, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    ckpt = crafted_checkpoint(finished_run, tmp_path, "model.generator",
                              {"_target_": "builtins.open", "file": str(victim), "mode": "w"})
    result = subprocess.run([sys.executable, "-m", "ganexp.sample", str(ckpt), "--n", "4", "--out",
                             str(tmp_path / "x.png")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "model.generator._target_" in result.stderr
    assert victim.read_text() == "keep me"
    resumed = run_train(f"ckpt_path={ckpt}", cwd=tmp_path, timeout=120)  # and as a resume
    assert resumed.returncode == 2 and len(resumed.stderr.strip().splitlines()) == 1
    assert "model.generator._target_" in resumed.stderr and not (tmp_path / "outputs").exists()
    assert victim.read_text() == "keep me"


class TinyGenerator(torch.nn.Module):
    """A user's own model, in a package of theirs (here: this test module)."""

    def __init__(self, latent_dim: int, out_shape: list[int], **_: object):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.net = torch.nn.Linear(latent_dim, int(np.prod(out_shape)))

    def forward(self, z):
        return self.net(z).view(len(z), *self.out_shape)


def test_a_users_own_model_loads_once_declared_and_not_before(finished_run, tmp_path, monkeypatch, capsys):
    name = f"{__name__}.TinyGenerator"
    checkpoint = torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["model"]["generator"] = {"_target_": name, "latent_dim": 100, "out_shape": [1, 8, 8]}
    tiny = TinyGenerator(100, [1, 8, 8])
    checkpoint["state_dict"] = {**{k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("generator.")},
                                **{f"generator.{k}": v for k, v in tiny.state_dict().items()}}
    ckpt = tmp_path / "own.ckpt"
    torch.save(checkpoint, ckpt)
    out = tmp_path / "s.npz"
    assert sample.main([str(ckpt), "--n", "3", "--out", str(out)]) == 2
    assert name in capsys.readouterr().err and not out.exists()
    monkeypatch.setenv("GANEXP_PARTS", f"generator={name}")
    assert sample.main([str(ckpt), "--n", "3", "--out", str(out)]) == 0
    assert np.load(out)["images"].shape == (3, 8, 8)
    monkeypatch.setenv("GANEXP_PARTS", f"discriminator={name}")  # declared as another kind: still refused
    assert sample.main([str(ckpt), "--n", "3", "--out", str(out)]) == 2
    monkeypatch.delenv("GANEXP_PARTS")
    registry.register("generator")(TinyGenerator)  # or in code
    try:
        assert sample.main([str(ckpt), "--n", "3", "--out", str(tmp_path / "t.npz")]) == 0
    finally:
        registry.unregister(TinyGenerator)


def test_no_path_from_a_file_reaches_instantiate_importlib_eval_or_pickle():
    """Only registry.py imports by name (and only names it allows); nothing calls instantiate or eval."""
    offenders = []
    for path in sorted((ROOT / "ganexp").rglob("*.py")) + [ROOT / "train.py"]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\binstantiate\(|(?<![.\w])eval\(|(?<![.\w])exec\(|pickle\.loads?\(|weights_only=False\)|allow_pickle=True",
                         code) and "save_checkpoint(" not in code:  # writing a whole checkpoint, not reading one
                offenders.append(f"{path.name}:{n}: {line.strip()}")
            if "import_module(" in code and path.name != "registry.py":
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert offenders == []


# --- 2. resume continues the run in the checkpoint ---------------------------------------------

CHANGES = [  # an override that changes the experiment → the key the refusal lists
    (["loss=hinge"], "loss.name"),
    (["loss=nonsaturating"], "loss.name"),
    (["loss.label_smoothing=0.1"], "loss.label_smoothing"),
    (["d_steps=1"], "d_steps"),
    (["batch_size=64"], "batch_size"),
    (["optimizer.lr=2e-4"], "optimizer.lr"),
    (["optimizer.d.lr=5e-4"], "optimizer.d.lr"),
    (["optimizer=sgd", "optimizer.lr=1e-3"], "optimizer.g._target_"),
    (["model=mlp"], "model.generator.hidden"),
    (["model=dcgan"], "model.generator._target_"),
    (["model.discriminator.dropout=0.5"], "model.discriminator.dropout"),
    (["noise.latent_dim=50"], "noise.latent_dim"),
    (["noise.prior=uniform"], "noise.prior"),
    (["noise.instance_sigma=0.1"], "noise.instance_sigma"),
    (["seed=1"], "seed"),
    (["n_fixed=16"], "n_fixed"),
    (["data=toy", "model=toy_mlp"], "data._target_"),
    (["data.value_range=[0,1]"], "data.value_range"),
    (["experiment=vanilla_gan"], "loss.name"),
    (["+model.generator.extra=1"], "model.generator.extra"),
]


@pytest.mark.parametrize("overrides, key", CHANGES, ids=[" ".join(o) for o, _ in CHANGES])
def test_every_experiment_key_changed_on_resume_is_refused_listing_it(finished_run, tmp_path, overrides, key):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    cfg = make_cfg(tmp_path, "eval=none", *overrides, f"ckpt_path={ckpt}")
    with pytest.raises(ConfigError) as err:
        resume_config(cfg, [*overrides, f"ckpt_path={ckpt}"])
    message = str(err.value)
    assert key in message and "init_from=" in message and "\n" not in message


@pytest.mark.parametrize("overrides, refused", [([], False), (["experiment=mnist_fast"], True),
                                               (["reuse_fake=false", "ema.decay=0"], False), (["reuse_fake=true"], True)])
def test_a_checkpoint_from_before_reuse_fake_and_ema_resumes_as_it_trained(finished_run, tmp_path, overrides, refused):
    """Settings added later (resume.ADDED_LATER) read as what such a run trained with: its own command line
    resumes; turning one on is a change of experiment, refused naming it."""
    ckpt = read_checkpoint(finished_run / "checkpoints" / "last.ckpt")
    for key in ("reuse_fake", "ema"):
        del ckpt["hyper_parameters"][key]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    command = [*ORIGINAL, *overrides, f"ckpt_path={old}"]  # the run's own command line (+ overrides)
    cfg = make_cfg(tmp_path / "out", *command)
    if refused:
        with pytest.raises(ConfigError, match="reuse_fake|model"):
            resume_config(cfg, command)
        return
    merged, _ = resume_config(cfg, command)
    assert merged.reuse_fake is False and merged.ema.decay == 0.0


ALLOWED = [["trainer.max_epochs=5"], ["trainer.max_time=00:00:01:00"], ["eval_every=10", "eval=default"],
           ["log_every=5", "ckpt_every=3", "image_every=4"], ["logger=none"], ["callbacks=figures"],
           ["eval.n=100", "eval.n_final=200"], ["loss=minimax", "d_steps=2", "optimizer.lr=1e-3"], ["trainer.accelerator=cpu"]]


@pytest.mark.parametrize("overrides", ALLOWED, ids=[" ".join(o) for o in ALLOWED])
def test_overrides_that_extend_or_observe_are_allowed_and_the_experiment_comes_from_the_checkpoint(
        finished_run, stored, tmp_path, overrides):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    cfg = make_cfg(tmp_path, *overrides, f"ckpt_path={ckpt}")  # the defaults: nonsaturating, 1 D step, batch 64
    merged, _ = resume_config(cfg, [*overrides, f"ckpt_path={ckpt}"])
    config = plain(merged)
    for key in ("model", "loss", "optimizer", "noise", "seed", "batch_size", "d_steps", "n_fixed"):
        assert config[key] == stored[key], key
    assert config["loss"]["name"] == "minimax" and config["d_steps"] == 2 and config["batch_size"] == 32
    assert config["optimizer"]["g"]["lr"] == 1e-3
    for key, value in (o.split("=", 1) for o in overrides if "." in o.split("=")[0] and o.startswith("trainer")):
        assert str(config["trainer"][key.split(".")[1]]) == value


@pytest.mark.slow
def test_readme_resume_continues_the_same_experiment_and_keeps_the_original_settings(run_copy, tmp_path):
    hydra_before = {p.name: p.read_bytes() for p in (run_copy / ".hydra").glob("*.yaml")}
    ckpt = run_copy / "checkpoints" / "last.ckpt"
    result = run_train(f"ckpt_path={ckpt}", "trainer.max_epochs=2", "eval=none",
                       "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "outputs").exists()  # in place
    checkpoint = torch.load(ckpt, weights_only=True)
    config = checkpoint["hyper_parameters"]
    assert checkpoint["iteration"] == 12  # 6 more iterations of limit_train_batches=6
    assert (config["loss"]["name"], config["d_steps"], config["batch_size"]) == ("minimax", 2, 32)
    assert config["optimizer"]["g"]["lr"] == 1e-3
    assert all(g["lr"] == 1e-3 for state in checkpoint["optimizer_states"] for g in state["param_groups"])
    assert {p.name: p.read_bytes() for p in (run_copy / ".hydra").glob("*.yaml")} == hydra_before  # originals kept
    attempt = next((run_copy / ".hydra" / "attempts").glob("*/overrides.yaml"))
    assert "trainer.max_epochs=2" in yaml.safe_load(attempt.read_text())
    record = json.loads((run_copy / "metrics.json").read_text())
    assert record["status"] == "finished" and "trainer.max_epochs=2" in record["resumes"][-1]["overrides"]


@pytest.mark.slow
@pytest.mark.parametrize("args", [["ckpt_path=CKPT", "loss=hinge", "optimizer.lr=5e-3"],
                                  ["ckpt_path=CKPT", "noise.latent_dim=50"],
                                  ["ckpt_path=CKPT", "model=mlp"],
                                  ["ckpt_path=CKPT", "optimizer=sgd"],
                                  ["ckpt_path=BEST"],
                                  ["hydra.run.dir=RUN", "loss=hinge"]], ids=lambda a: " ".join(a))
def test_a_refused_resume_leaves_the_finished_run_byte_identical(run_copy, tmp_path, args):
    best = run_copy / "checkpoints" / "best.ckpt"  # weights only, as EvalCallback writes it
    full = torch.load(run_copy / "checkpoints" / "last.ckpt", weights_only=True)
    torch.save({"state_dict": full["state_dict"], "hyper_parameters": full["hyper_parameters"], "iteration": 6}, best)
    before = tree_digest(run_copy)
    subs = {"CKPT": str(run_copy / "checkpoints" / "last.ckpt"), "BEST": str(best), "RUN": str(run_copy)}
    weights_only = any("BEST" in a for a in args)
    args = [re.sub("CKPT|BEST|RUN", lambda m: subs[m.group(0)], a) for a in args]
    result = run_train(*args, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "init_from=" in lines[0] and (("weights only" in lines[0]) == weights_only)
    assert tree_digest(run_copy) == before
    assert not (tmp_path / "outputs").exists()


# --- 3. a run folder is chosen, never inferred -------------------------------------------------

@pytest.mark.slow
def test_a_checkpoint_outside_a_run_folder_starts_a_new_run_and_leaves_its_folders_alone(finished_run, tmp_path):
    home = tmp_path / "home"
    (home / "Downloads").mkdir(parents=True)
    shutil.copy(finished_run / "checkpoints" / "last.ckpt", home / "Downloads" / "gan.ckpt")
    (home / "metrics.json").write_text('{"mine": true}')
    (home / "checkpoints").mkdir()  # even a folder that looks like a run's
    shutil.copy(finished_run / "checkpoints" / "last.ckpt", home / "checkpoints" / "last.ckpt")
    before = tree_digest(home)
    work = tmp_path / "work"
    work.mkdir()
    for ckpt in (home / "Downloads" / "gan.ckpt", home / "checkpoints" / "last.ckpt"):
        assert in_place_run(ckpt) is None
        result = run_train(f"ckpt_path={ckpt}", "trainer.max_epochs=2", "eval=none", "trainer.enable_progress_bar=false",
                           cwd=work)
        assert result.returncode == 0, result.stderr[-3000:]
    assert tree_digest(home) == before
    runs = sorted(p.parent for p in work.glob("outputs/*/*/metrics.json"))
    assert len(runs) >= 1
    record = json.loads((runs[-1] / "metrics.json").read_text())
    assert record["status"] == "finished" and record["resumed_from"].endswith("last.ckpt")
    assert (runs[-1] / RUN_MARKER).is_file()
    assert torch.load(runs[-1] / "checkpoints" / "last.ckpt", weights_only=True)["iteration"] == 12


@pytest.mark.slow
def test_a_run_folder_as_ckpt_path_starts_a_new_run_and_writes_nothing_beside_it(run_copy, tmp_path_factory):
    parent_before = sorted(p.name for p in run_copy.parent.iterdir())
    before = tree_digest(run_copy)
    work = tmp_path_factory.mktemp("work")
    result = run_train(f"ckpt_path={run_copy}", "trainer.max_epochs=2", "eval=none", "trainer.enable_progress_bar=false",
                       cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in run_copy.parent.iterdir()) == parent_before
    assert tree_digest(run_copy) == before
    assert len(list(work.glob("outputs/*/*/checkpoints/last.ckpt"))) == 1


# --- 4. a generator file made for sharing --------------------------------------------------------

def test_export_samples_like_the_checkpoint_and_carries_no_machine_path(finished_run, tmp_path, capsys):
    out = tmp_path / "g.safetensors"
    assert export.main([str(finished_run), "--out", str(out)]) == 0
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        about = json.loads(f.metadata()["ganexp"])
        names = set(f.keys())
    assert about["model"]["generator"]["_target_"] == "ganexp.models.mlp.MLPGenerator"
    assert about["noise"] == {"prior": "normal", "latent_dim": 100} and about["image_shape"] == [1, 8, 8]
    assert about["iteration"] == 6 and names and all(not n.startswith("generator.") for n in names)
    assert str(tmp_path) not in out.read_bytes().decode("latin-1") and "root" not in about["data"]
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert sample.main([str(out), "--n", "9", "--out", str(a), "--seed", "3"]) == 0
    assert sample.main([str(finished_run), "--n", "9", "--out", str(b), "--seed", "3"]) == 0
    assert np.array_equal(np.load(a)["images"], np.load(b)["images"])


@pytest.mark.parametrize("fields", [
    {"protocol": [1, 2]}, {"protocol": {"classifier": "x", "dataset": 7}}, {"protocol": "text"},
    {"final": [1], "best": {"fid": "low", "kid": True, "is": 2.5}, "monitor": {"a": 1}, "best_iteration": "7"},
    {"final": {"fid": [[[]]]}, "protocol": {"classifier": {"sha256": ["not", "a", "hash"]}}},
])
def test_export_reads_the_runs_record_as_data_whatever_its_fields_hold(run_copy, tmp_path, fields):
    record = json.loads((run_copy / "metrics.json").read_text())
    (run_copy / "metrics.json").write_text(json.dumps({**record, **fields}))
    out = tmp_path / "g.safetensors"
    assert export.main([str(run_copy), "--out", str(out)]) == 0
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        about = json.loads(f.metadata()["ganexp"])
    metrics = about["metrics"]
    assert about["dataset"] == "DigitsDataModule" and metrics["classifier_sha256"] is None
    assert all(isinstance(v, (int, float)) for part in ("final", "best") for v in (metrics[part] or {}).values())
    assert metrics["monitor"] in (None, record.get("monitor")) and metrics["best_iteration"] in (None, record.get("best_iteration"))
    assert metrics["best"] in (None, {"is": 2.5}) and metrics["final"] in (None, {})


def test_a_crafted_export_is_refused_like_a_checkpoint(finished_run, tmp_path, capsys):
    from safetensors.torch import save_file

    good = tmp_path / "g.safetensors"
    assert export.main([str(finished_run), "--out", str(good)]) == 0
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        metadata, weights = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    cases = {
        "evil.safetensors": {**metadata, "ganexp": json.dumps(put(json.loads(metadata["ganexp"]), "model.generator",
                                                                  {"_target_": "builtins.open", "file": str(victim), "mode": "w"}))},
        "nested.safetensors": {**metadata, "ganexp": json.dumps(put(json.loads(metadata["ganexp"]), "data.x",
                                                                    {"_target_": "os.remove", "path": str(victim)}))},
        "notjson.safetensors": {**metadata, "ganexp": "{not json"},
        "foreign.safetensors": {"format": "pt"},
    }
    for name, meta in cases.items():
        save_file(weights, str(tmp_path / name), metadata=meta)
        assert sample.main([str(tmp_path / name), "--out", str(tmp_path / "x.png")]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and name in err[0], err
    assert victim.read_text() == "keep me" and not (tmp_path / "x.png").exists()
    (tmp_path / "broken.safetensors").write_bytes(good.read_bytes()[:100])
    assert sample.main([str(tmp_path / "broken.safetensors"), "--out", str(tmp_path / "x.png")]) == 2


def test_init_from_starts_a_new_run_from_the_weights_and_refuses_weights_that_do_not_fit(finished_run, tmp_path):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    module = build_module(make_cfg(tmp_path, "model=mlp_small", "loss=hinge"))  # another loss: a new experiment
    init_weights(module, ckpt)
    assert all(torch.equal(v, state[f"generator.{k}"]) for k, v in module.generator.state_dict().items())
    assert all(torch.equal(v, state[f"discriminator.{k}"]) for k, v in module.discriminator.state_dict().items())
    exported = tmp_path / "g.safetensors"
    export.export(finished_run, exported)
    module = build_module(make_cfg(tmp_path, "model=mlp_small"))
    init_weights(module, exported)  # an export: G only
    assert all(torch.equal(v, state[f"generator.{k}"]) for k, v in module.generator.state_dict().items())
    with pytest.raises(BadFile, match="generator weights do not fit"):
        init_weights(build_module(make_cfg(tmp_path, "model=mlp")), ckpt)


@pytest.mark.slow
def test_init_from_on_the_command_line_records_its_source(finished_run, tmp_path):
    ckpt = finished_run / "checkpoints" / "last.ckpt"
    result = run_train(f"init_from={ckpt}", "model=mlp_small", "loss=hinge", "eval=none", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=3", "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = next(tmp_path.glob("outputs/*/*"))
    record = json.loads((run / "metrics.json").read_text())
    assert record["init_from"] == str(ckpt) and record["iteration"] == 3
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["loss"]["name"] == "hinge"


# --- 5. every load failure is one line -------------------------------------------------------------

def test_malformed_checkpoints_are_one_line(finished_run, tmp_path, capsys):
    real = torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=True)
    cases = {
        "list.ckpt": [1, 2, 3],
        "noconfig.ckpt": {"state_dict": real["state_dict"]},
        "configlist.ckpt": {"state_dict": real["state_dict"], "hyper_parameters": [1]},
        "nomodel.ckpt": {"state_dict": real["state_dict"], "hyper_parameters": {"data": {}, "noise": {}}},
        "nostate.ckpt": {"hyper_parameters": real["hyper_parameters"]},
        "badstate.ckpt": {"hyper_parameters": real["hyper_parameters"], "state_dict": {"generator.w": 3}},
        "wrongshape.ckpt": {"hyper_parameters": put(real["hyper_parameters"], "model.generator.hidden", [7]),
                            "state_dict": real["state_dict"]},
        # sizes no machine holds, checked on the meta device before anything is allocated
        "hugehidden.ckpt": {"hyper_parameters": put(real["hyper_parameters"], "model.generator.hidden", [10**9, 10**9]),
                            "state_dict": real["state_dict"]},
    }
    for dotted, value in [("noise.latent_dim", 7), ("noise.latent_dim", "many"), ("noise.latent_dim", 10**12),
                          ("data.shape", [1, 9, 9]), ("data.shape", "square"), ("data.value_range", ["a", 1]),
                          ("data.value_range", [1, -1]), ("data.value_range", [float("nan"), 1]),
                          ("data.value_range", "wide")]:
        name = f"{dotted}={value}.ckpt".replace("/", "_")
        cases[name] = {**real, "hyper_parameters": put(real["hyper_parameters"], dotted, value)}
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    for name in [*cases, "empty.ckpt", "text.ckpt"]:
        assert sample.main([str(tmp_path / name), "--out", str(tmp_path / "x.png")]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and name in err[0], (name, err)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_malformed_npz_is_one_line(tmp_path, capsys):
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((20, 8, 8), np.uint8))
    (tmp_path / "truncated.npz").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "zero.npz").write_bytes(b"")
    np.savez(tmp_path / "none.npz", images=np.zeros((0, 8, 8), np.uint8))
    (tmp_path / "text.npz").write_text("hello")
    np.savez(tmp_path / "objects.npz", images=np.array([object()], dtype=object))
    import io
    import zipfile

    for name, shape in (("liar.npz", (10**12, 8, 8)), ("small_liar.npz", (1000, 8, 8))):  # header ≠ data
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
        with zipfile.ZipFile(tmp_path / name, "w") as z:
            z.writestr("images.npy", header.getvalue() + b"\0" * 64)
    for name in ("truncated.npz", "zero.npz", "none.npz", "text.npz", "objects.npz", "liar.npz", "small_liar.npz"):
        assert evaluate.main([str(tmp_path / name), "--data", "digits"]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and name in err[0], (name, err)


def test_debug_gives_the_traceback(tmp_path):
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(ConfigError):
        sample.main([str(tmp_path / "text.ckpt"), "--debug"])


def test_compare_marks_an_unreadable_job_and_goes_on(tmp_path, capsys):
    from tests.sweeps.test_compare import make_job

    make_job(tmp_path, ["optimizer.lr=1e-4"], status="finished", monitor="fid", best={"fid": 30.0}, iteration=10)
    make_job(tmp_path, ["optimizer.lr=2e-4"], status="finished", monitor="fid", best={"fid": 20.0}, iteration=10)
    broken_metrics = make_job(tmp_path, ["optimizer.lr=5e-4"], status="finished")
    (broken_metrics / "metrics.json").write_text('{"status": "fini')
    broken_overrides = make_job(tmp_path, ["optimizer.lr=1e-3"], status="finished", best={"fid": 1.0})
    (broken_overrides / ".hydra" / "overrides.yaml").write_text("- [unclosed\n")
    broken_config = make_job(tmp_path, ["optimizer.lr=2e-3"], status="finished", best={"fid": 2.0})
    (broken_config / ".hydra" / "config.yaml").write_text("seed: [1\n")
    listed = make_job(tmp_path, ["optimizer.lr=3e-3"], status="finished", best={"fid": 3.0})
    (listed / "metrics.json").write_text("[1, 2]")
    assert compare.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("**unreadable**") == 4
    for folder in (broken_metrics, broken_overrides, broken_config, listed):
        assert folder.relative_to(tmp_path).parts[0] in out or "unreadable" in out
    summary = compare.summarize(tmp_path)
    assert [j.value for j in summary.jobs if j.finished] == [30.0, 20.0]
    assert "4 of 6 jobs did not finish (4 unreadable)" in summary.markdown


@pytest.mark.slow
def test_a_sweep_rerun_with_an_unreadable_record_fails_that_job_only_and_keeps_the_file(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "model=mlp_small", "eval=none", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
            "trainer.enable_progress_bar=false", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    assert run_train(*args, cwd=tmp_path).returncode == 0
    bad = next(sweep.rglob("seed=1/metrics.json"))
    bad.write_text("{broken")
    result = run_train(*args, cwd=tmp_path)
    assert result.returncode == 1  # one job did not finish: the sweep says so
    assert bad.read_text() == "{broken"
    assert "1 of 2 jobs did not finish (1 unreadable)" in result.stdout + result.stderr


def _set_exp_avg(c):
    c["optimizer_states"][0]["state"][0]["exp_avg"] = torch.zeros(3)


def _set_rng(c):
    c["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)


TRAINING_STATE = {  # what Lightning and the module restore: crafted, each would crash or corrupt the resume
    "optimizer state of the wrong shape": _set_exp_avg,
    "no optimizer states": lambda c: c.update(optimizer_states=[]),
    "rng of the wrong size": _set_rng,
    "rng not a mapping": lambda c: c.update(rng="x"),
    "iteration not a number": lambda c: c.update(iteration="abc"),
    "no loops": lambda c: c.update(loops={}),
    "an extra weight": lambda c: c["state_dict"].update({"generator.evil": torch.zeros(1)}),
}


@pytest.mark.parametrize("craft", TRAINING_STATE.values(), ids=TRAINING_STATE.keys())
def test_a_crafted_training_state_is_refused_before_the_resume_writes_anything(finished_run, tmp_path, craft):
    from train import train

    checkpoint = torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=True)
    craft(checkpoint)
    ckpt = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, ckpt)
    out = tmp_path / "run"
    with pytest.raises(BadFile, match="cannot be resumed") as err:
        train(make_cfg(out, *ORIGINAL, f"ckpt_path={ckpt}"), overrides=[f"ckpt_path={ckpt}"])
    assert "\n" not in str(err.value) and not (out / "metrics.json").exists()
