"""Fixtures only; what tests share lives in tests/helpers/."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import pytorch_lightning  # noqa: F401 - imported first, so the variables torch sets on import are in the snapshot
import torch  # noqa: F401

from tests.helpers import make_cfg

# Domain classifiers train into a cache of this test session's own (digits: seconds), unless
# GANEXP_CACHE_DIR names one already (keeps MNIST's ~2 minutes of training between sessions).
# pytest-xdist's workers inherit it from the controller, which made it: a classifier is trained once, under the
# cache's lock, and the folder is removed when the session ends.
_OWN_CACHE = None
if "GANEXP_CACHE_DIR" not in os.environ:
    _OWN_CACHE = os.environ["GANEXP_CACHE_DIR"] = tempfile.mkdtemp(prefix="ganexp-cache-")


def pytest_unconfigure(config):
    if _OWN_CACHE is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test starts from the worker's environment: what an in-process run sets is undone after it.
    (Lightning's DDP setup leaves LOCAL_RANK=0 in os.environ; a later `train.py trainer=ddp` started from
    that worker then took itself for a rank launched from outside and waited forever for rank 1.)"""
    saved = dict(os.environ)
    yield
    for key in [k for k in os.environ if k not in saved]:
        del os.environ[key]
    os.environ.update(saved)


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda *overrides: make_cfg(tmp_path, *overrides)
