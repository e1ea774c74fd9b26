"""Shared test setup: the kit root on sys.path, a tiny seeded phantom dataset, a fixed torch state."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from data.phantoms import make_phantom_dataset  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """6 train / 2 test phantom pairs at 64x64 (the dataset resizes them to 256x256)."""
    return make_phantom_dataset(tmp_path_factory.mktemp("tiny"), n_train=6, n_test=2, size=64, seed=3)


def run_script(args, cwd, timeout=600):
    """Run a kit script like a user would, returning the CompletedProcess (text, both streams)."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=timeout)
