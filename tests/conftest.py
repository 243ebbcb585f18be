"""Fixtures only; what tests share lives in tests/helpers/."""
from __future__ import annotations

import os
import tempfile

import pytest

from tests.helpers import make_cfg

# Domain classifiers train into a cache of this test session's own (digits: seconds), unless
# GANEXP_CACHE_DIR names one already (keeps MNIST's ~2 minutes of training between sessions).
# pytest-xdist's workers share one (its run id names it): a classifier is trained once, under the cache's lock.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
os.environ.setdefault("GANEXP_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"ganexp-cache-{_RUN}") if _RUN
                      else tempfile.mkdtemp(prefix="ganexp-cache-"))


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda *overrides: make_cfg(tmp_path, *overrides)
