"""Shared fixtures. The real-model tier loads SmolLM2 once per session; every other test builds tiny models."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def default_model():
    from circuits import load_model

    return load_model()
