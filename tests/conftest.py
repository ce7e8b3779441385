"""Test-wide settings: LR images are cached in a temporary folder, never in the home folder."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _temporary_lr_cache(tmp_path_factory, monkeypatch):
    # One cache for the whole session, so each test does not recompute Set5's LR images.
    monkeypatch.setenv("SRLIB_CACHE", str(tmp_path_factory.getbasetemp() / "lr-cache"))
