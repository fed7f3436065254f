"""Shared fixtures: the tiny checkpoints are written once per machine (versioned), a studio per test session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub: no network in the suite
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning teams (one per thread that ran
# torch) made tiny generations 10-20x slower (tests/test_batching.py: 212 s -> 23 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio import tiny
from studio.cache import ModelCache
from studio.engine.contract import Studio
from studio.outputs import Outputs
from studio.settings import Settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return tiny.write_all(Path(os.environ.get("ATELIER_TINY_DIR", REPO / ".cache" / "tiny")))


def make_settings(tiny_dir: Path, outputs: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"model": "tiny", "preload": False, **overrides}
    return Settings.from_env({}, tiny_dir=tiny_dir, outputs=outputs, **values)


@pytest.fixture(scope="session")
def studio(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Studio:
    """One studio on the tiny checkpoint for the whole run (like the app: one cache, many requests)."""
    settings = make_settings(tiny_dir, tmp_path_factory.mktemp("outputs"))
    return Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))


@pytest.fixture
def fresh_studio(tiny_dir: Path, tmp_path: Path) -> Studio:
    settings = make_settings(tiny_dir, tmp_path / "outputs")
    return Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))


def pixels(image_or_path: Image.Image | Path | str) -> np.ndarray:
    image = image_or_path if isinstance(image_or_path, Image.Image) else Image.open(image_or_path)
    return np.asarray(image.convert("RGB")).astype(np.int16)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def running_app(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Studio]]:
    """The whole studio served on a free local port; yields (url, studio)."""
    import app

    settings = make_settings(tiny_dir, tmp_path_factory.mktemp("app-outputs"), port=free_port())
    studio = app.create_studio(settings)
    demo = app.build_demo(studio)
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{settings.port}/", studio
    finally:
        demo.close()


def is_skip(outputs: object) -> bool:
    """True for a streaming handler's in-between yield: every output `gr.skip()`, nothing shown changes."""
    import gradio as gr

    return isinstance(outputs, tuple) and all(part == gr.skip() for part in outputs)


def final(outputs: Iterator[object]) -> object:
    """What a streaming handler shows in the end: its last yield."""
    items = list(outputs)
    assert items, "the handler yielded nothing"
    return items[-1]


def shown(outputs: Iterator[object]) -> list[object]:
    """Only the yields of a streaming handler that change something."""
    return [item for item in outputs if not is_skip(item)]
