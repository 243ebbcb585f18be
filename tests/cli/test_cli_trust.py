"""sample / export / evaluate with output paths, sizes and files someone else chose (issue 27): `--out` never
writes through a link and replaces a file only with --force; --n and an .npz are sized against this machine's
memory before anything is drawn or inflated; a generator with non-finite weights is one line."""
from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ganexp import evaluate, export, sample
from ganexp.errors import ConfigError
from ganexp.io.files import load_generator, read_checkpoint
from ganexp.data.base import quantize
from ganexp.run.validate import machine_memory
from tests.helpers import ROOT, run_python, run_train

RUN = ["model=mlp_small", "eval=none", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "log_every=1",
       "image_every=0", "trainer.enable_progress_bar=false"]
LATENT, IMAGE = 100, 64  # mlp_small on digits: z of 100, 1x8x8 images


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished digits run made by `python train.py` (3 iterations)."""
    cwd = tmp_path_factory.mktemp("made")
    result = run_train(*RUN, "hydra.run.dir=run", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "run"


def cli(name: str, *args: str, umask: int | None = None) -> subprocess.CompletedProcess:
    """`python -m ganexp.<name> ARGS` as a user runs it (a fresh `python` under another umask)."""
    if umask is None:
        return run_python("-m", f"ganexp.{name}", *map(str, args), cwd=ROOT)
    return subprocess.run([sys.executable, "-m", f"ganexp.{name}", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, preexec_fn=None if umask is None else lambda: os.umask(umask))


def one_line(result: subprocess.CompletedProcess, prog: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"ganexp.{prog}: error: ") and "Traceback" not in result.stderr
    return lines[0].removeprefix(f"ganexp.{prog}: error: ")


def digest(folder: Path) -> dict[str, str]:
    """Every entry under `folder`, links not followed: a file's sha256, a link's target, a folder's '/'."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        out[key] = ("-> " + os.readlink(p) if p.is_symlink() else "/" if p.is_dir()
                    else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


# --- 1. --out: never through a link, an existing file only with --force -------------------------------------


MAINS = {"sample": sample.main, "export": export.main, "evaluate": evaluate.main}


def in_process(capsys, prog: str, *args) -> str:
    """ganexp.<prog>'s main in this process: exit 2 and one error line, returned without its prefix."""
    assert MAINS[prog](list(map(str, args))) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ganexp.{prog}: error: "), captured.err
    return lines[0].removeprefix(f"ganexp.{prog}: error: ")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "dangling", "folder"])
@pytest.mark.parametrize("force", [False, True])
def test_a_link_at_out_is_refused_naming_it_and_its_target_and_nothing_is_written(run, tmp_path, capsys, kind, force):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.npz").write_bytes(b"precious")
    target = {"file": outside / "victim.npz", "dangling": outside / "new.npz", "folder": outside}[kind]
    here = tmp_path / "here"
    here.mkdir()
    for prog, name in (("sample", "s.npz"), ("sample", "s.png"), ("export", "g.safetensors")):
        link = here / name
        link.symlink_to(target)
        before = digest(tmp_path)
        args = [run, "--out", link, *(["--n", "9"] if prog == "sample" else []), *(["--force"] if force else [])]
        line = (one_line(cli(prog, *args), prog) if (kind, force, prog) == ("file", True, "sample")
                else in_process(capsys, prog, *args))  # one case as a user runs it
        assert line == (f"--out {link} is a symbolic link (to {target}); ganexp never writes through a link, "
                        "even with --force: remove the link or give another file name")
        assert digest(tmp_path) == before  # the victim, the link, and no new file anywhere
    assert (outside / "victim.npz").read_bytes() == b"precious"


@pytest.mark.parametrize("prog, name", [("sample", "s.npz"), ("sample", "grid.png"), ("export", "g.safetensors")])
def test_an_existing_out_is_replaced_only_with_force(run, tmp_path, capsys, prog, name):
    out = tmp_path / name
    out.write_bytes(b"my own file")
    extra = ["--n", "1500", "--seed", "3"] if prog == "sample" else []
    main = sample.main if prog == "sample" else export.main
    assert main([str(run), "--out", str(out), *extra]) == 2
    assert capsys.readouterr().err == (f"ganexp.{prog}: error: --out {out} exists; give --force to replace it, "
                                       "or another file name\n")
    assert out.read_bytes() == b"my own file"
    assert main([str(run), "--out", str(out), *extra, "--force"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # the suffix kept (no .npz.npz), no temporary left
    content = out.read_bytes()
    if name.endswith(".png"):
        assert content.startswith(b"\x89PNG\r\n\x1a\n")
    elif name.endswith(".npz"):  # the seed's samples, drawn in chunks, are those of one whole batch
        generator, config, _ = load_generator(run)
        with torch.no_grad():
            z = torch.Generator().manual_seed(3)
            whole = generator(torch.randn(1500, LATENT, generator=z))
        expected = quantize(whole, config["data"]["value_range"])[:, 0].numpy()
        assert np.array_equal(np.load(out)["images"], expected)
    else:
        generator, _, _ = load_generator(out)
        assert all(torch.equal(generator.state_dict()[k], v) for k, v in load_generator(run)[0].state_dict().items())


def test_out_inside_the_run_folder_is_never_written_through_a_link_in_it(run, tmp_path, capsys):
    import shutil

    copy = Path(shutil.copytree(run, tmp_path / "received"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "grid.png").write_bytes(b"precious")
    (copy / "figures").symlink_to(outside)  # planted by whoever made the folder
    before = digest(tmp_path)
    for prog, out in (("sample", copy / "figures" / "grid.png"), ("export", copy / "figures" / "g.safetensors"),
                      ("sample", copy / "figures" / "new" / "s.npz")):
        line = in_process(capsys, prog, copy, "--out", out, "--force")
        assert line.startswith(f"{copy / 'figures'} is a symbolic link (to {outside}); ganexp never writes through")
    assert digest(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_exports_and_samples_get_the_users_file_mode(run, tmp_path, mask):
    export_out, sample_out, grid = tmp_path / "g.safetensors", tmp_path / "s.npz", tmp_path / "s.png"
    if mask == 0o022:  # as a user runs it
        assert cli("export", run, "--out", export_out, umask=mask).returncode == 0
        assert cli("sample", export_out, "--n", "4", "--out", sample_out, umask=mask).returncode == 0
        assert cli("sample", run, "--n", "4", "--out", grid, umask=mask).returncode == 0
    else:
        old = os.umask(mask)
        try:
            assert export.main([str(run), "--out", str(export_out)]) == 0
            assert sample.main([str(export_out), "--n", "4", "--out", str(sample_out)]) == 0
            assert sample.main([str(run), "--n", "4", "--out", str(grid)]) == 0
        finally:
            os.umask(old)
    for out in (export_out, sample_out, grid):
        assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask, out


# --- 2. --n sized against this machine's memory ----------------------------------------------------------


@pytest.mark.slow
def test_n_that_memory_cannot_hold_is_one_line_naming_n_the_need_and_the_machine(run, tmp_path, capsys):
    have = machine_memory()
    n = 10**9
    cases = [("sample", ["--out", tmp_path / "s.npz"], LATENT * 4 + IMAGE),          # z + uint8 images
             ("sample", ["--out", tmp_path / "s.png"], LATENT * 4 + IMAGE * 4 * 14),  # z + the grid's float copies
             ("evaluate", [], LATENT * 4 + IMAGE + 6000)]                             # z + images + their scores
    for prog, args, each in cases:
        line = (one_line(cli(prog, run, "--n", n, *args), prog) if prog == "evaluate"
                else in_process(capsys, prog, run, "--n", n, *args))
        assert line == (f"--n {n} needs about {n * each / 2**30:,.1f} GiB ({each} bytes a sample, its latent of "
                        f"{LATENT} numbers included), more than this machine's {have / 2**30:.1f} GiB; "
                        f"give --n {have // each} or fewer")
    assert list(tmp_path.iterdir()) == []


def test_the_largest_n_the_message_names_passes_and_one_more_is_refused(run, tmp_path, monkeypatch):
    _, config, _ = load_generator(run)
    each = LATENT * 4 + IMAGE
    monkeypatch.setattr(sample, "machine_memory", lambda: 1000 * each + each - 1, raising=False)
    sample.check_n(1000, config, IMAGE)
    with pytest.raises(ConfigError, match=r"^--n 1001 needs about .* give --n 1000 or fewer$"):
        sample.check_n(1001, config, IMAGE)
    with pytest.raises(ConfigError, match="give --n 1000 or fewer"):
        sample.main([str(run), "--n", "1001", "--out", str(tmp_path / "s.npz"), "--debug"])
    assert sample.main([str(run), "--n", "1000", "--out", str(tmp_path / "s.npz")]) == 0
    assert np.load(tmp_path / "s.npz")["images"].shape == (1000, 8, 8)


# --- 3. .npz bombs: sizes read from the zip directory and the .npy header, before inflating ------------------


def npy_header(shape, descr="|u1") -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    return header.getvalue()


def zeros_member(z: zipfile.ZipFile, name: str, shape) -> None:
    """A member of uint8 zeros written in slices: a bomb made without holding it."""
    with z.open(name, "w", force_zip64=True) as f:
        f.write(npy_header(shape))
        left = int(np.prod(shape))
        block = bytes(min(left, 1 << 24))
        while left:
            f.write(block[:left])
            left -= min(left, len(block))


def test_an_npz_that_inflates_past_what_can_be_scored_is_refused_before_it_is_inflated(tmp_path, monkeypatch,
                                                                                          capsys):
    bomb = tmp_path / "bomb.npz"
    n = 1_500_000  # 96 MB of 8x8 zeros in a file of ~0.1 MB
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        zeros_member(z, "images.npy", (n, 8, 8))
    assert bomb.stat().st_size < 500_000
    monkeypatch.setattr(evaluate, "machine_memory", lambda: 2**30, raising=False)
    tracemalloc.start()
    try:
        assert evaluate.main([str(bomb), "--data", "digits"]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    need = n * 64 + n * 6000
    assert capsys.readouterr().err == (
        f"ganexp.evaluate: error: {bomb}: member images.npy holds {n:,} images (91.6 MiB uncompressed); scoring "
        f"them needs about 8.5 GiB, more than this machine's 1.0 GiB; give at most {2**30 * n // need:,} images\n")
    assert peak < 8 * 2**20  # the 96 MB were never inflated


def test_a_member_larger_than_memory_is_refused_whatever_its_name(tmp_path, monkeypatch, capsys):
    path = tmp_path / "padded.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images.npy", npy_header((200, 8, 8)) + bytes(200 * 64))
        zeros_member(z, "junk.npy", (3 << 20,))
    monkeypatch.setattr(evaluate, "machine_memory", lambda: 2 << 20, raising=False)
    assert evaluate.main([str(path), "--data", "digits"]) == 2
    assert capsys.readouterr().err == (f"ganexp.evaluate: error: {path}: member junk.npy inflates to 3.0 MiB, more "
                                       "than this machine's 2.0 MiB of memory; is it an .npz of samples?\n")


def claimed_bomb(path: Path, n: int) -> None:
    """An .npz whose zip directory and header say n 8x8 images (the size a 2.9 MB file of zeros inflates to)
    over a few real bytes: what is refused must be refused from the sizes alone."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("images.npy", npy_header((n, 8, 8)) + bytes(64))
    data = bytearray(path.read_bytes())
    real = len(npy_header((n, 8, 8))) + 64
    claimed = real - 64 + n * 64
    for at in (22, data.rindex(b"PK\x01\x02") + 24):  # uncompressed size: local header, central directory
        assert int.from_bytes(data[at:at + 4], "little") == real
        data[at:at + 4] = claimed.to_bytes(4, "little")
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.skipif(machine_memory() > 250 * 2**30, reason="this machine could score 3 GB of images")
def test_a_3_gb_npz_is_one_line_from_the_command_line(tmp_path):
    path = tmp_path / "bomb.npz"
    n = 3 * 10**9 // 64
    claimed_bomb(path, n)
    line = one_line(cli("evaluate", path, "--data", "digits"), "evaluate")
    assert line.startswith(f"{path}: member images.npy holds {n:,} images (2.8 GiB uncompressed); scoring them needs "
                           f"about {n * 6064 / 2**30:,.1f} GiB, more than this machine's "
                           f"{machine_memory() / 2**30:.1f} GiB; give at most")


# --- 4. non-finite generator weights -------------------------------------------------------------------


@pytest.mark.slow
def test_a_generator_with_a_nan_weight_is_one_line_for_sample_evaluate_and_export(run, tmp_path, capsys):
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    name = next(k for k in checkpoint["state_dict"] if k.startswith("generator."))
    checkpoint["state_dict"][name][0] = float("nan")
    bad_ckpt = tmp_path / "nan.ckpt"
    torch.save(checkpoint, bad_ckpt)
    good = tmp_path / "good.safetensors"
    assert export.main([str(run), "--out", str(good)]) == 0
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(good), framework="pt") as f:
        metadata, weights = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    weights[name.removeprefix("generator.")][-1] = float("inf")
    bad_export = tmp_path / "inf.safetensors"
    save_file(weights, str(bad_export), metadata=metadata)
    before = digest(tmp_path)
    tensor = name.removeprefix("generator.")
    for path in (bad_ckpt, bad_export):
        for prog, args in (("sample", ["--out", tmp_path / "s.npz"]), ("evaluate", ["--n", "200"]),
                           ("export", ["--out", tmp_path / "again.safetensors"])):
            if prog == "export" and path == bad_export:
                continue  # an export is not exported again (its own one line, below)
            line = (one_line(cli(prog, path, *args), prog) if (path, prog) == (bad_ckpt, "export")
                    else in_process(capsys, prog, path, *args))
            assert line.startswith(f"{path}: the generator's weight {tensor} holds NaN or Inf values"), line
    line = in_process(capsys, "export", bad_export, "--out", tmp_path / "again.safetensors")
    assert line.startswith(f"{bad_export} is an export already")
    assert digest(tmp_path) == before
    assert read_checkpoint(bad_ckpt)["state_dict"][name].isnan().any()  # (the file itself is readable)


def test_an_image_folder_that_memory_cannot_hold_is_refused_after_one_image_is_read(tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(5):
        Image.fromarray(np.full((6, 4, 3), 40 * k, np.uint8)).save(folder / f"{k}.png")
    each = 3 * 6 * 4 + evaluate.SCORE_BYTES["images"]
    monkeypatch.setattr(evaluate, "machine_memory", lambda: 5 * each - 1)
    with pytest.raises(ConfigError, match=rf"^{folder} holds 5 images of \[3, 6, 4\]; scoring them needs about .*"
                                          rf"give at most 4 images$"):
        evaluate.images_from(folder)
    monkeypatch.setattr(evaluate, "machine_memory", lambda: 5 * each)
    images = evaluate.images_from(folder)
    assert images.shape == (5, 3, 6, 4) and images.dtype == torch.uint8
    assert [int(images[k].float().mean()) for k in range(5)] == [0, 40, 80, 120, 160]
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(folder / "5.png")  # one of another size: named
    monkeypatch.setattr(evaluate, "machine_memory", lambda: 6 * each)
    with pytest.raises(ConfigError, match=r"not all of one size \(0.png: \[3, 6, 4\], 5.png: \[3, 4, 6\]\)"):
        evaluate.images_from(folder)
