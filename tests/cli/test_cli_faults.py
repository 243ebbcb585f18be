"""One-line errors (exit 2, no traceback) from compare, sample and export on bad --metric / --out, checked
before any work; and compare on a read-only sweep folder still prints its leaderboard (exit 0)."""
import os
import stat

import pytest

from ganexp.sweeps import compare

from ganexp import export, sample
from ganexp.metrics.scores import IMAGE_METRICS, TOY_METRICS
from tests.sweeps.test_compare import make_job, table_rows

FIDS = {"1e-4": 30.0, "2e-4": 20.0, "5e-4": 50.0}


@pytest.fixture
def image_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    for lr, fid in FIDS.items():
        make_job(sweep_dir, [f"optimizer.lr={lr}"], status="finished", iteration=10, monitor="fid",
                 final={"fid": fid, "coverage": 10}, best={"fid": fid, "coverage": 10})
    return sweep_dir


@pytest.fixture
def dummy_ckpt(tmp_path):
    """Not a checkpoint at all: any error about it would prove that it was read before --out was checked."""
    path = tmp_path / "dummy.ckpt"
    path.write_bytes(b"not a checkpoint")
    return path


def one_error_line(capsys, prog):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"ganexp.{prog}: error: ") and "Traceback" not in captured.err + captured.out
    return lines[0]


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def read_only(folder):
    """chmod 0o555, or skip where that does not stop writes (root)."""
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    if os.access(folder, os.W_OK):
        folder.chmod(0o755)
        pytest.skip("chmod does not make a folder read-only for this user (root)")


# compare --metric


def test_compare_unknown_metric_lists_the_registry_and_the_loss_fallback(image_sweep, capsys):
    before = files_under(image_sweep)
    assert compare.main([str(image_sweep), "--metric", "fdi"]) == 2
    line = one_error_line(capsys, "compare")
    assert "'fdi'" in line and "did you mean fid?" in line
    for metric in [*IMAGE_METRICS, *TOY_METRICS]:  # all 11 registry names, by name
        assert metric in line
    assert "loss/<tag>" in line and compare.LOSS_FALLBACK in line
    assert capsys.readouterr().out == "" and files_under(image_sweep) == before  # no table, no summary files


@pytest.mark.parametrize("metric", ["", "loss/", "FID", "val/fid"])
def test_compare_rejects_other_non_metrics(image_sweep, capsys, metric):
    assert compare.main([str(image_sweep), "--metric", metric]) == 2
    assert "swd" in one_error_line(capsys, "compare")


def test_compare_known_metric_that_no_job_reports_is_one_line_naming_what_they_report(image_sweep, capsys):
    assert compare.main([str(image_sweep), "--metric", "swd"]) == 2
    line = one_error_line(capsys, "compare")
    assert "no job in" in line and "reports swd" in line and line.endswith("the jobs report fid, coverage")
    assert capsys.readouterr().out == "" and not (image_sweep / "summary.md").exists()


def test_compare_loss_tag_that_no_job_logged_is_an_error_too(image_sweep, capsys):
    assert compare.main([str(image_sweep), "--metric", "loss/d"]) == 2
    assert "logged loss/d to TensorBoard" in one_error_line(capsys, "compare")


def test_compare_unreported_metric_still_shows_the_failures_when_no_job_finished(tmp_path, capsys):
    make_job(tmp_path, ["optimizer.lr=1e-4"], status="failed", reason="RuntimeError: out of memory")
    make_job(tmp_path, ["optimizer.lr=2e-4"], status="diverged", reason="non-finite loss at iteration 3")
    assert compare.main([str(tmp_path), "--metric", "fid"]) == 0  # the dashes come from the failures: show them
    rows = table_rows(capsys.readouterr().out, "| # | optimizer.lr")
    assert [r[-1] for r in rows] == ["**failed**: RuntimeError: out of memory",
                                     "**diverged**: non-finite loss at iteration 3"]


def test_compare_known_metric_still_ranks(image_sweep, capsys):
    assert compare.main([str(image_sweep), "--metric", "fid"]) == 0
    rows = table_rows(capsys.readouterr().out, "| # | optimizer.lr")
    assert [(r[0], r[1], float(r[2])) for r in rows] == [("1", "2e-4", 20.0), ("2", "1e-4", 30.0), ("3", "5e-4", 50.0)]
    assert (image_sweep / "summary.md").is_file() and (image_sweep / "summary.csv").is_file()


# compare on a read-only sweep folder


def test_compare_read_only_sweep_prints_the_leaderboard_and_one_note(image_sweep, capsys):
    before = files_under(image_sweep)
    read_only(image_sweep)
    try:
        assert compare.main([str(image_sweep)]) == 0
    finally:
        image_sweep.chmod(0o755)
    captured = capsys.readouterr()
    rows = table_rows(captured.out, "| # | optimizer.lr")
    assert [(r[0], r[1], float(r[2])) for r in rows] == [("1", "2e-4", 20.0), ("2", "1e-4", 30.0), ("3", "5e-4", 50.0)]
    assert "all 3 jobs finished" in captured.out
    note = captured.err.strip().splitlines()
    assert len(note) == 1 and note[0].startswith("ganexp.sweeps.compare: note: could not write summary.md")
    assert str(image_sweep) in note[0] and "Traceback" not in captured.err
    assert files_under(image_sweep) == before


# sample --out: checked before the checkpoint is read


def test_sample_out_onto_a_folder(tmp_path, dummy_ckpt, capsys):
    folder = tmp_path / "grids"
    folder.mkdir()
    assert sample.main([str(dummy_ckpt), "--n", "4", "--out", str(folder)]) == 2
    line = one_error_line(capsys, "sample")
    assert line == f"ganexp.sample: error: --out {folder} is a folder; give a file name ending in .png or .npz"
    assert files_under(folder) == []


def test_sample_out_under_a_file(tmp_path, dummy_ckpt, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    for out in (blocker / "grid.png", blocker / "deeper" / "samples.npz"):
        assert sample.main([str(dummy_ckpt), "--out", str(out)]) == 2
        line = one_error_line(capsys, "sample")
        assert line.startswith(f"ganexp.sample: error: --out {out}: cannot create its folder")
        assert f"{blocker} exists and is not a folder" in line and str(dummy_ckpt) not in line
    assert blocker.read_text() == "a file, not a folder"
    assert files_under(tmp_path) == ["dummy.ckpt", "notes.txt"]


def test_sample_out_with_another_suffix(tmp_path, dummy_ckpt, capsys):
    assert sample.main([str(dummy_ckpt), "--out", str(tmp_path / "grid.jpg")]) == 2
    assert "--out" in one_error_line(capsys, "sample")
    assert files_under(tmp_path) == ["dummy.ckpt"]


def test_sample_out_in_a_read_only_folder(tmp_path, dummy_ckpt, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    read_only(folder)
    try:
        for out in (folder / "grid.png", folder / "new" / "grid.png"):  # the parent, or the folder to create it in
            assert sample.main([str(dummy_ckpt), "--out", str(out)]) == 2
            assert f"--out {out}: {folder} is not writable" in one_error_line(capsys, "sample")
    finally:
        folder.chmod(0o755)
    assert files_under(folder) == []


def test_sample_out_whose_folder_can_be_created_passes_the_check(tmp_path, dummy_ckpt, capsys):
    out = tmp_path / "new" / "deeper" / "grid.png"
    assert sample.main([str(dummy_ckpt), "--out", str(out)]) == 2
    line = one_error_line(capsys, "sample")
    assert "--out" not in line and str(dummy_ckpt) in line  # past --out: the dummy checkpoint is what fails
    assert not out.exists()


# export --out


def test_export_out_onto_a_folder(tmp_path, dummy_ckpt, capsys):
    for folder in (tmp_path / "exports", tmp_path / "g.safetensors"):  # a folder even when named like a file
        folder.mkdir()
        assert export.main([str(dummy_ckpt), "--out", str(folder)]) == 2
        line = one_error_line(capsys, "export")
        assert line == f"ganexp.export: error: --out {folder} is a folder; give a file name ending in .safetensors"
        assert files_under(folder) == []


def test_export_out_under_a_file(tmp_path, dummy_ckpt, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    out = blocker / "new" / "g.safetensors"  # the old check passed this (the parent does not exist yet)
    assert export.main([str(dummy_ckpt), "--out", str(out)]) == 2
    assert f"--out {out}: cannot create its folder" in one_error_line(capsys, "export")
    assert files_under(tmp_path) == ["dummy.ckpt", "notes.txt"]


def test_export_out_in_a_read_only_folder(tmp_path, dummy_ckpt, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    read_only(folder)
    try:
        out = folder / "new" / "g.safetensors"
        assert export.main([str(dummy_ckpt), "--out", str(out)]) == 2
        assert f"--out {out}: {folder} is not writable" in one_error_line(capsys, "export")
    finally:
        folder.chmod(0o755)
    assert files_under(folder) == []
