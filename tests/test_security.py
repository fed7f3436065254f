"""Security defaults of the served studio: the queue cannot be bypassed, uploads are capped, the queue is bounded."""

from __future__ import annotations

import time

import httpx
from gradio_client import Client

import app
from studio.settings import Settings
from tests.conftest import free_port, make_settings

# Gradio's answer on its direct-call routes when the queue is closed to the API (`queue(api_open=False)`): the route
# exists and found the txt2img endpoint (an unknown name there is a 500 FnIndexInferError, a path Gradio does not
# serve a bare "Not Found"), and it refuses because the endpoint is queued.
QUEUE_ONLY = "This API endpoint does not accept direct HTTP POST requests. Please join the queue to use this API."


def test_direct_rest_calls_cannot_bypass_the_queue(running_app):
    url, _ = running_app
    with httpx.Client(base_url=url, timeout=30) as http:
        for path in ("gradio_api/run/txt2img", "gradio_api/run/txt2img/", "gradio_api/api/txt2img"):
            response = http.post(path, json={"data": ["coat", "", 2, 7.0, 64, 64, "Euler", 1, 1, 1]})
            assert (response.status_code, response.json()) == (404, {"detail": QUEUE_ONLY}), path


def test_uploads_over_the_size_limit_are_refused(tiny_dir, tmp_path):
    settings = Settings.from_env(
        {"STUDIO_MAX_UPLOAD_MB": "1"},
        model="tiny",
        tiny_dir=tiny_dir,
        outputs=tmp_path,
        port=free_port(),
        preload=False,
    )
    demo = app.build_demo(app.create_studio(settings))
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{settings.port}/", timeout=30) as http:
            big = http.post("gradio_api/upload", files={"files": ("big.png", b"\0" * (2 * 1024 * 1024))})
            small = http.post("gradio_api/upload", files={"files": ("small.png", b"\0" * 1024)})
        assert big.status_code == 413, big.status_code
        assert small.status_code == 200, small.status_code
    finally:
        demo.close()


def test_a_full_queue_says_so_and_the_studio_keeps_serving(tiny_dir, tmp_path):
    """More requests than the studio can hold while the GPU is busy: the extra ones are told the queue is full, the
    held ones finish once the GPU is free, and the studio serves the next request as usual.

    The test holds the GPU lock itself while it submits, so "busy" does not depend on how fast this machine runs
    (a race the CI machine once lost: every request had finished before the next one joined)."""
    settings = make_settings(tiny_dir, tmp_path, port=free_port(), queue_size=1)
    studio = app.create_studio(settings)
    demo = app.build_demo(studio)
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{settings.port}/"
    # txt2img takes up to a batch of calls at once (they wait together for the batch), plus `queue_size` waiting
    held = studio.limits.max_batch_size + settings.queue_size
    asked = held + 3

    def answer(job) -> str:
        try:
            job.result(timeout=120)
            return "done"
        except Exception as exc:  # noqa: BLE001 (the message is what the test checks)
            return str(exc)

    try:
        client = Client(url, verbose=False)
        with studio.cache.gpu():  # the GPU is busy while every request arrives
            jobs = [
                client.submit(prompt=f"coat {i}", num_inference_steps=2, seed=i, api_name="/txt2img")
                for i in range(asked)
            ]
            deadline = time.monotonic() + 60
            while sum(job.done() for job in jobs) < asked - held and time.monotonic() < deadline:
                time.sleep(0.05)
        answers = [answer(job) for job in jobs]
        refused = [a for a in answers if a != "done"]
        assert len(refused) >= asked - held, answers
        assert all("queue is full" in a.lower() for a in refused), answers
        assert "done" in answers
        gallery, seed, _ = client.predict(prompt="coat", num_inference_steps=2, seed=9, api_name="/txt2img")
        assert seed == 9 and gallery
    finally:
        demo.close()
