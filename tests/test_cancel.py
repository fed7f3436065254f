"""Cancel through Gradio's own door: a client's `job.cancel()` stops the GPU work at the next denoising step, in
every mode, and the next session's request starts at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
from studio.engine.contract import Studio
from tests.conftest import free_port, make_settings


class UNetCalls:
    """Counts the base UNet's forward calls (a forward hook: read-only, removed after the test)."""

    def __init__(self, studio: Studio) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._handle = studio.cache.base().unet.register_forward_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        with self._lock:
            self.count += 1

    def wait_for(self, calls: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.count < calls:
            assert time.monotonic() < deadline, f"the UNet ran {self.count} times, not {calls}"
            time.sleep(0.02)

    def settle(self, quiet: float = 1.5, timeout: float = 30) -> int:
        """The count once no call has come for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        last, since = self.count, time.monotonic()
        while time.monotonic() - since < quiet:
            assert time.monotonic() < deadline, "the UNet never stopped"
            time.sleep(0.05)
            if self.count != last:
                last, since = self.count, time.monotonic()
        return last

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture(scope="module")
def served(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Studio, Path]]:
    folder = tmp_path_factory.mktemp("cancel")
    Image.new("RGB", (64, 64), (150, 90, 60)).save(folder / "look.png")
    settings = make_settings(tiny_dir, folder / "outputs", port=free_port(), batch_window_ms=0)
    studio = app.create_studio(settings)
    demo = app.build_demo(studio)
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    studio.cache.base()
    try:
        yield f"http://127.0.0.1:{settings.port}/", studio, folder / "look.png"
    finally:
        demo.close()


LONG: dict[str, dict[str, Any]] = {
    "txt2img": {"prompt": "a long coat", "num_inference_steps": 150, "batch_count": 4, "guidance_scale": 1.0},
    "refine": {"prompt": "a long coat", "num_inference_steps": 150, "strength": 1.0, "loops": 8,
               "guidance_scale": 1.0},
}  # fmt: skip


@pytest.mark.parametrize("mode", sorted(LONG))
def test_a_client_cancel_stops_the_unet_within_a_step_and_the_next_session_starts_at_once(served, mode: str) -> None:
    url, studio, look = served
    calls = UNetCalls(studio)
    try:
        alice, bob = Client(url, verbose=False), Client(url, verbose=False)
        files = {"image": handle_file(str(look))} if mode == "refine" else {}
        job = alice.submit(**LONG[mode], **files, api_name=f"/{mode}")
        calls.wait_for(3)
        job.cancel()
        at_cancel = calls.count
        stopped = calls.settle()
        assert stopped - at_cancel <= 2, f"{stopped - at_cancel} UNet calls after the cancel"  # the step under way
        assert stopped < 150  # far from the 600 (txt2img) or 1,200 (refine) calls the request asked for
        started = time.monotonic()
        gallery, seed, _ = bob.predict(prompt="a short skirt", num_inference_steps=2, seed=5, api_name="/txt2img")
        assert seed == 5 and len(gallery) == 1
        assert time.monotonic() - started < 20  # not behind the cancelled run's remaining steps
    finally:
        calls.close()
