"""Fixtures shared by several test modules."""

import pytest


@pytest.fixture(scope="session")
def micro(tmp_path_factory):
    """The micro sandbox world (trained in ~15 s), built once per test session."""
    from stackalign.worlds import build_world

    return build_world(tmp_path_factory.mktemp("micro"), preset="micro", progress=False)


@pytest.fixture(scope="session")
def smol_dir():
    """The real SmolLM2-135M-Instruct as an HF directory (converted from its PyPI GGUF once, then cached)."""
    from stackalign.models.real import real_model_path

    return real_model_path("smollm2-135m-instruct", progress=False)
