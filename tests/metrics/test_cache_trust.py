"""The metrics cache ($GANEXP_CACHE_DIR) may be shared, so every file in it is data to check: a cached
classifier or floor that fails a check is retrained / recomputed into a fresh file (said in the log), a
read-only cache with a valid classifier is used as it is, and without one the error is one line."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import ganexp
from ganexp.io import writes
from ganexp.metrics import classifier as clf
from ganexp.metrics.evaluator import Evaluator

FLOOR_N = 300
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits classifier trained the real way into an empty cache: (its file's bytes, its record, the log)."""
    folder = tmp_path_factory.mktemp("trained")
    logs: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANEXP_CACHE_DIR", str(folder))
        clf.load_classifier("digits", log=logs.append)
    path = folder / "classifier-digits.pt"
    return path.read_bytes(), torch.load(path, weights_only=True), logs, folder


@pytest.fixture
def cache(tmp_path, monkeypatch, trained):
    """A cache folder of this test's own holding the valid classifier."""
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "classifier-digits.pt").write_bytes(trained[0])
    monkeypatch.setenv("GANEXP_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def retrains(monkeypatch, trained):
    """train_classifier replaced by one that hands back the valid record at once; the calls it got."""
    calls: list[str] = []

    def fake(name, root=None, log=print):
        calls.append(name)
        return copy.deepcopy(trained[1])

    monkeypatch.setattr(clf, "train_classifier", fake)
    return calls


def _save(record, path: Path) -> None:
    torch.save(record, path)


def _rehashed(record: dict) -> dict:
    record["sha256"] = clf.state_hash(record["state_dict"])
    return record


@pytest.mark.slow
def test_a_missing_classifier_is_trained_into_the_cache(trained):
    data, record, logs, folder = trained
    assert logs[0] == f"classifier[digits]: {folder / 'classifier-digits.pt'} does not exist; training a fresh one"
    assert record["sha256"] == clf.state_hash(record["state_dict"]) and record["test_accuracy"] >= 0.95
    assert sorted(p.name for p in folder.iterdir()) == ["classifier-digits.lock", "classifier-digits.pt"]


def _state(record, key, value):
    record["state_dict"][key] = value
    return _rehashed(record)


def _bomb(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:  # ~32 KB that unpacks to 32 MiB
        archive.writestr("archive/data.pkl", bytes(32 << 20))


DAMAGED = {  # name: (damage(record, path) writes the file, what the log says of it)
    "truncated": (lambda r, p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
                  "cannot be read as a torch file (BadZipFile)"),
    "empty": (lambda r, p: p.write_bytes(b""), "cannot be read as a torch file (BadZipFile)"),
    "garbage": (lambda r, p: p.write_bytes(b"not a checkpoint" * 64), "cannot be read as a torch file (BadZipFile)"),
    "a FIFO": (lambda r, p: (p.unlink(), os.mkfifo(p)), "is not a regular file"),
    "not a record": (lambda r, p: _save([1, 2, 3], p), "is not a ganexp classifier record"),
    "tampered, old hash": (lambda r, p: (r["state_dict"]["head.1.bias"].add_(1.0), _save(r, p)),
                           "does not match its recorded sha256"),
    "NaN weights, hash recomputed": (lambda r, p: (r["state_dict"]["body.0.weight"].fill_(float("nan")),
                                                   _save(_rehashed(r), p)),
                                     "holds non-finite weights (body.0.weight)"),
    "wrong weight shape": (lambda r, p: _save(_state(r, "body.9.weight", torch.zeros(128, 64)), p),
                           "holds body.9.weight as torch.float32 [128, 64], not torch.float32 [128, 128]"),
    "an extra weight": (lambda r, p: _save(_state(r, "body.10.weight", torch.zeros(3)), p),
                        "holds weights of another model (its state_dict keys differ)"),
    "huge shape": (lambda r, p: _save({**r, "shape": [1, 10**6, 10**6]}, p),
                   "has shape [1, 1000000, 1000000], not [1, 8, 8]"),
    "a tensor for a number": (lambda r, p: _save({**r, "test_accuracy": torch.tensor(0.5)}, p),
                              "has a bad test_accuracy (tensor(0.5000))"),
    "an accuracy over 1": (lambda r, p: _save({**r, "test_accuracy": 7.0}, p), "has a bad test_accuracy (7.0)"),
    "over 16 MiB": (lambda r, p: _save({**r, "padding": torch.zeros(5 << 20)}, p),
                    "is over 16 MiB, too large for a classifier"),
    "a zip bomb": (lambda r, p: _bomb(p), "unpacks to over 16 MiB, too large for a classifier"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_cached_classifier_that_fails_a_check_is_retrained_into_a_fresh_file(case, cache, retrains, trained):
    path = cache / "classifier-digits.pt"
    damage, problem = DAMAGED[case]
    damage(copy.deepcopy(trained[1]), path)
    damaged = path.read_bytes() if writes.is_regular(path) else b""
    logs: list[str] = []
    model, info = clf.load_classifier("digits", log=logs.append)
    assert retrains == ["digits"]
    assert logs == [f"classifier[digits]: {path} {problem}; training a fresh one"]
    fresh = torch.load(path, weights_only=True)
    assert path.read_bytes() != damaged and clf._cached(path, "digits")[1] is None
    assert fresh["sha256"] == clf.state_hash(fresh["state_dict"]) == trained[1]["sha256"] == info["sha256"]
    assert clf.state_hash(model.state_dict()) == info["sha256"]
    assert set(info) == set(clf.FIELDS) - {"state_dict"} | {"path"}  # only known parts, nothing from the file

    logs.clear()
    clf.load_classifier("digits", log=logs.append)  # the fresh file is used as it is
    assert retrains == ["digits"] and logs == []


def test_only_known_fields_are_taken_from_a_valid_file(cache, retrains, trained):
    _save({**trained[1], "evil": torch.zeros(3), "path": "/elsewhere"}, cache / "classifier-digits.pt")
    _, info = clf.load_classifier("digits", log=pytest.fail)
    assert retrains == [] and "evil" not in info and info["path"] == str(cache / "classifier-digits.pt")


_NAN_EVAL = """
import sys, torch
from ganexp.metrics import classifier as clf
from ganexp.metrics.evaluator import Evaluator
clf.train_classifier = lambda name, root=None, log=print: torch.load(sys.argv[1], weights_only=True)
floor = Evaluator("digits", log=print).floor(300)
print("fid", floor["fid"])
"""


@pytest.mark.slow
def test_nan_weights_with_a_recomputed_hash_do_not_crash_the_process(cache, trained):
    """They used to reach FID's eigenvalues: oneMKL's DGEBAL error and a segfault (returncode -11)."""
    path = cache / "classifier-digits.pt"
    record = copy.deepcopy(trained[1])
    record["state_dict"]["body.9.weight"][0, 0] = float("nan")
    _save(_rehashed(record), path)
    proc = subprocess.run([sys.executable, "-c", _NAN_EVAL, str(trained[3] / "classifier-digits.pt")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"classifier[digits]: {path} holds non-finite weights (body.9.weight); training a fresh one"
    assert lines[-1].startswith("fid ") and float(lines[-1].split()[1]) >= 0
    assert clf._cached(path, "digits")[0]["sha256"] == trained[1]["sha256"]


def test_finite_weights_that_overflow_are_retrained_by_the_evaluator(cache, retrains, trained):
    path = cache / "classifier-digits.pt"
    record = copy.deepcopy(trained[1])
    record["state_dict"]["body.9.weight"].mul_(1e38)  # finite, but the features overflow to inf
    _save(_rehashed(record), path)
    logs: list[str] = []
    evaluator = Evaluator("digits", log=logs.append)
    assert retrains == ["digits"]
    assert logs == [f"classifier[digits]: {path} gives non-finite features on the test split; training a fresh one"]
    assert bool(evaluator.real_features.isfinite().all()) and evaluator.info["classifier"]["sha256"] == trained[1]["sha256"]


# the real-vs-real floors ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def true_floor(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("floor")
    (folder / "classifier-digits.pt").write_bytes(trained[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANEXP_CACHE_DIR", str(folder))
        return Evaluator("digits", log=lambda *_: None).floor(FLOOR_N)


def _floor_path(folder: Path, sha: str) -> Path:
    return folder / f"floor-digits-{sha[:16]}-{FLOOR_N}-v{ganexp.__version__}.json"


def _floor_text(floor: dict, **changes) -> str:
    return json.dumps({**floor, **changes})


FLOORS = {  # name: (the file's bytes from the true floor, what the log says: {p} is the file)
    "truncated": (lambda f: b'{"fid": 4.2', "cannot read {p} (Expecting ',' delimiter: line 1 column 12 (char 11))"),
    "empty": (lambda f: b"", "cannot read {p} (Expecting value: line 1 column 1 (char 0))"),
    "not text": (lambda f: b"\xff\xfe garbage",
                 "cannot read {p} ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)"),
    "over 64 KiB": (lambda f: b" " * (64 << 10) + json.dumps(f).encode(),
                    "{p} is over 65,536 bytes, too large for a ganexp record; is it one? remove or replace it"),
    "a list": (lambda f: json.dumps(list(f.values())).encode(), None),
    "a string for a number": (lambda f: _floor_text(f, fid="4.2").encode(), None),
    "a bool for a number": (lambda f: _floor_text(f, coverage=True).encode(), None),
    "NaN": (lambda f: _floor_text(f, fid=float("nan")).encode(), None),
    "Infinity": (lambda f: _floor_text(f, kid=float("inf")).encode(), None),
    "negative": (lambda f: _floor_text(f, fid=-1.0).encode(), None),
    "an int past float": (lambda f: _floor_text(f, fid=10**400).encode(), None),
    "a metric missing": (lambda f: json.dumps({k: v for k, v in f.items() if k != "is"}).encode(), None),
    "an extra key": (lambda f: _floor_text(f, evil=1.0).encode(), None),
}
NOT_A_FLOOR = "{p} is not a floor of fid, kid, is, coverage, class_kl, precision, recall, density, knn_coverage (finite numbers >= 0)"


@pytest.mark.slow
@pytest.mark.parametrize("case", FLOORS)
def test_a_cached_floor_that_fails_a_check_is_recomputed_into_a_fresh_file(case, cache, trained, true_floor,
                                                                          monkeypatch):
    path = _floor_path(cache, trained[1]["sha256"])
    content, problem = FLOORS[case]
    path.write_bytes(content(true_floor))
    logs: list[str] = []
    evaluator = Evaluator("digits", log=logs.append)
    computed: list[int] = []
    monkeypatch.setattr(evaluator, "_floor", lambda n: computed.append(n) or dict(true_floor))  # its numbers, at once
    assert evaluator.floor(FLOOR_N) == true_floor and computed == [FLOOR_N]
    assert logs == [f"metrics: {(problem or NOT_A_FLOOR).format(p=path)}; computing the floor again into a fresh file"]
    assert json.loads(path.read_text()) == true_floor
    logs.clear()
    again = Evaluator("digits", log=logs.append)
    monkeypatch.setattr(again, "_floor", lambda n: pytest.fail("the fresh floor was computed again"))
    assert again.floor(FLOOR_N) == true_floor and logs == []  # the fresh file, read


# a read-only cache ----------------------------------------------------------------------------------

def _read_only(folder: Path, argv: list[str], timeout: int = 300) -> tuple[subprocess.CompletedProcess, str]:
    """`python ARGV` with `folder` read-only for it, as it holds for root too: a read-only bind mount in a
    user namespace (unshare -rm), else (not root) the folder's mode. (the result, the error's strerror)"""
    mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && [ ! -w "$0" ] && exec "$@"'
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", mount, str(folder), "true"], capture_output=True) \
        if shutil.which("unshare") else None
    if probe is not None and probe.returncode == 0:
        cmd, why = ["unshare", "-rm", "sh", "-c", mount, str(folder), sys.executable, *argv], "Read-only file system"
    elif os.geteuid() != 0:
        folder.chmod(0o555)
        cmd, why = [sys.executable, *argv], "Permission denied"
    else:
        pytest.skip("needs a read-only folder: root ignores file modes and no user namespace (unshare -rm) "
                    "can mount one read-only here")
    try:
        assert not os.access(folder, os.W_OK) or cmd[0] == "unshare"
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT), why
    finally:
        folder.chmod(0o755)


_RO_EVAL = """
from ganexp.metrics.evaluator import Evaluator
evaluator = Evaluator("digits", log=print)
print("sha256", evaluator.info["classifier"]["sha256"])
print("fid", evaluator.floor(300)["fid"])
"""


@pytest.mark.slow
def test_a_read_only_cache_with_a_valid_classifier_is_used_as_it_is(cache, trained, true_floor):
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    proc, why = _read_only(cache, ["-c", _RO_EVAL])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [
        f"sha256 {trained[1]['sha256']}",
        f"metrics: cannot cache the floor in {cache} ({why}); it is computed again at each start",
        f"fid {true_floor['fid']}",
    ]
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before  # no lock file, nothing written


@pytest.mark.slow
@pytest.mark.parametrize("holds", ["nothing", "NaN weights"])
def test_a_read_only_cache_without_a_valid_classifier_is_one_line(holds, cache, trained):
    path = cache / "classifier-digits.pt"
    if holds == "nothing":
        path.unlink()
        problem = "does not exist"
    else:
        record = copy.deepcopy(trained[1])
        record["state_dict"]["head.1.weight"][3, 3] = float("inf")
        _save(_rehashed(record), path)
        problem = "holds non-finite weights (head.1.weight)"
    proc, why = _read_only(cache, ["-m", "ganexp.metrics.classifier", "data=digits"])
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"ganexp.metrics.classifier: error: the classifier cache {cache} cannot be written "
                           f"({why}) and its classifier-digits.pt {problem}; "
                           "set GANEXP_CACHE_DIR=<writable folder>\n")


def test_the_lock_is_never_opened_through_a_link(cache, retrains, tmp_path):
    (cache / "classifier-digits.pt").unlink()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lock = cache / "classifier-digits.lock"
    lock.symlink_to(victim)
    with pytest.raises(writes.LinkRefused) as err:
        clf.load_classifier("digits", log=lambda *_: None)
    assert str(err.value).startswith(f"{lock} is a symbolic link (to {victim}); ganexp never writes through a link")
    assert victim.read_text() == "precious" and retrains == [] and not (cache / "classifier-digits.pt").exists()
