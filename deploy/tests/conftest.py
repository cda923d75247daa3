"""Shared fixtures: rendered overlays (rendered once per test session)."""

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import manifests  # noqa: E402

_cache: dict[str, list[dict]] = {}


def rendered(path: str) -> list[dict]:
    """A fresh deep copy of `kubectl kustomize ROOT/path` (tests may mutate it)."""
    if path not in _cache:
        _cache[path] = manifests.render(manifests.ROOT / path)
    return copy.deepcopy(_cache[path])


@pytest.fixture
def production() -> list[dict]:
    return rendered("deploy/tests/overlays/production")


@pytest.fixture
def dev() -> list[dict]:
    return rendered("deploy/overlays/dev")
