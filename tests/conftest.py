"""Shared fixtures: the demo collection in data/ and the real pretrained encoders."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "demo"


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return DEMO


@pytest.fixture(scope="session")
def demo_photos() -> list[Path]:
    return sorted((DEMO / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def image_encoder():
    from retrieval.encoders.image_encoder import load_image_encoder

    return load_image_encoder()


@pytest.fixture(scope="session")
def text_encoder():
    from retrieval.encoders.text_encoder import load_text_encoder

    return load_text_encoder()
