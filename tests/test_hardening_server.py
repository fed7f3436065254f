"""The server's own doors, tried as a hostile client would: raw HTTP against a launched studio.

Half-written files are never served and do not outlive a restart; request bodies are capped however they arrive;
private handlers cost little whatever they are sent; run history is off; an unsafe or open launch says so plainly;
every sampler's PNG names its schedule the way A1111 reads it.
"""

from __future__ import annotations

import base64
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
from studio.engine.contract import Studio
from studio.metadata import parse_infotext, read_parameters
from studio.outputs import TEMP_DIR
from studio.schedulers import SAMPLERS
from studio.settings import Settings
from tests.conftest import REPO, free_port, make_settings

MB = 1024 * 1024


@contextmanager
def serve(settings: Settings) -> Iterator[tuple[str, Studio]]:
    studio = app.create_studio(settings)
    demo = app.build_demo(studio)
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{settings.port}/", studio
    finally:
        demo.close()


def served(http: httpx.Client, path: Path) -> int:
    return http.get(f"gradio_api/file={path}").status_code


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ---- 4. half-written files ----------------------------------------------------------------------------------


def test_leftover_part_files_are_removed_at_startup_and_never_served(tiny_dir, tmp_path):
    outputs = tmp_path / "outputs"
    beside = outputs / "2026-01-02" / "tmpk1ll3d.part"  # where the old atomic_write left them, in a served folder
    beside.parent.mkdir(parents=True)
    beside.write_bytes(b"\x89PNG\r\n\x1a\n half a print")
    stale = outputs / TEMP_DIR / "tmpst4le.part"  # a killed write in the private folder, from an earlier run
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\x89PNG half")
    an_hour_ago = time.time() - 2 * 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    kept = outputs / "2026-01-02" / "txt2img-0123.png"  # a finished result is not touched
    kept.write_bytes(b"\x89PNG whole")

    with serve(make_settings(tiny_dir, outputs, port=free_port())) as (url, _), httpx.Client(base_url=url) as http:
        assert not beside.exists() and not stale.exists()
        assert kept.exists() and served(http, kept) == 200
        assert served(http, beside) != 200


def test_a_write_that_fails_midway_is_never_served_and_leaves_nothing(tiny_dir, tmp_path):
    outputs = tmp_path / "outputs"
    with serve(make_settings(tiny_dir, outputs, port=free_port())) as (url, studio), httpx.Client(base_url=url) as http:
        seen: dict[str, object] = {}

        class DiesMidway:  # an image whose encoder is killed halfway through writing the PNG
            def save(self, handle, **_kwargs) -> None:
                handle.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 4096)
                handle.flush()
                (partial,) = files_under(outputs)
                seen["where"] = partial
                seen["status"] = served(http, partial)
                raise OSError("killed")

        with pytest.raises(OSError, match="killed"):
            studio.outputs.save(DiesMidway(), "coat", "textile-print")  # type: ignore[arg-type]
        assert seen["status"] != 200, f"the half-written file {seen['where']} was served"
        assert files_under(outputs) == []


# ---- 5. request bodies --------------------------------------------------------------------------------------


def data_url_join(size_mb: int, fn_index: int) -> bytes:
    """A queue join whose one input is a PNG `data:` URL of `size_mb` MB (never uploaded as a file)."""
    image = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * (size_mb * MB * 3 // 4)).decode()
    body = f'{{"data": ["data:image/png;base64,{image}"], "fn_index": {fn_index}, "session_hash": "s3ss10n"}}'
    return body.encode()


def fn_index(url: str, api_name: str) -> int:
    deps = httpx.get(f"{url}config").json()["dependencies"]
    return next(d["id"] for d in deps if d["api_name"] == api_name)


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 413, (response.status_code, response.text[:200])
    assert "MB" in response.json()["detail"] and "STUDIO_MAX_UPLOAD_MB" in response.json()["detail"]


def assert_still_serving(url: str) -> None:
    gallery, seed, _ = Client(url, verbose=False).predict(
        prompt="coat", num_inference_steps=2, seed=5, api_name="/txt2img"
    )
    assert seed == 5 and gallery


def test_a_data_url_over_the_upload_cap_is_refused_and_the_studio_keeps_serving(running_app):
    url, _ = running_app
    body = data_url_join(30, fn_index(url, "refine"))
    with httpx.Client(base_url=url, timeout=60) as http:
        for path in ("gradio_api/queue/join", "gradio_api/run/predict", "gradio_api/api/refine"):
            assert_refused(http.post(path, content=body, headers={"Content-Type": "application/json"}))
    assert_still_serving(url)


def test_a_chunked_body_over_the_cap_is_refused_without_a_length(running_app):
    url, _ = running_app
    body = data_url_join(30, fn_index(url, "refine"))

    def chunks() -> Iterator[bytes]:  # no Content-Length: httpx sends Transfer-Encoding: chunked
        for start in range(0, len(body), MB):
            yield body[start : start + MB]

    with httpx.Client(base_url=url, timeout=60) as http:
        response = http.post("gradio_api/queue/join", content=chunks(), headers={"Content-Type": "application/json"})
    assert_refused(response)
    assert_still_serving(url)


def test_a_body_within_the_cap_still_reaches_gradio(running_app):
    url, _ = running_app
    small = data_url_join(1, fn_index(url, "refine"))
    with httpx.Client(base_url=url, timeout=60) as http:
        response = http.post("gradio_api/queue/join", content=small, headers={"Content-Type": "application/json"})
    assert response.status_code == 200 and "event_id" in response.json()


# ---- 8. private handlers ------------------------------------------------------------------------------------


def test_the_token_counter_answers_a_megabyte_prompt_at_once_with_the_limit(running_app):
    url, studio = running_app
    limit = studio.cache.settings.limits.max_prompt_chars
    counter = fn_index(url, "TokenCounter")  # the prompt box's private counter, reachable as Gradio allows
    with httpx.Client(base_url=url, timeout=120) as http:
        started = time.perf_counter()
        response = http.post(
            "gradio_api/run/predict",
            json={"data": ["silk " * 200_000], "fn_index": counter, "session_hash": "s3ss10n"},
        )
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text[:200]
        shown = response.json()["data"][0]
        assert f"{limit}" in shown and "tokens" not in shown, shown
        assert elapsed < 5, f"{elapsed:.1f} s for a refused prompt"
        ok = http.post(
            "gradio_api/run/predict", json={"data": ["silk coat"], "fn_index": counter, "session_hash": "s3ss10n"}
        )
        assert ok.json()["data"][0].startswith("2/75 tokens")


def test_no_anonymous_handler_is_a_public_named_endpoint(running_app):
    url, _ = running_app
    named = httpx.get(f"{url}gradio_api/info").json()["named_endpoints"]
    assert named and not [name for name in named if name.startswith("/lambda")], list(named)


# ---- 9. run history (CVE-2026-134825) -----------------------------------------------------------------------


def test_run_history_and_ssr_are_off_even_when_the_environment_asks(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_RUN_HISTORY", "True")
    monkeypatch.setenv("GRADIO_SSR_MODE", "True")
    settings = make_settings(tiny_dir, tmp_path, port=free_port())
    studio = app.create_studio(settings)
    demo = app.build_demo(studio)
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        assert demo.ssr_mode is False
        with httpx.Client(base_url=f"http://127.0.0.1:{settings.port}/", timeout=30) as http:
            for path in ("gradio_api/runs", "gradio_api/runs/", "gradio_api/run-history/records"):
                response = http.get(path, headers={"Host": "attacker.example"})
                assert response.status_code == 404, (path, response.status_code)
            assert http.get("config").json()["run_history"] is False
    finally:
        demo.close()


# ---- 10. unsafe and open launches ---------------------------------------------------------------------------


def app_py(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STUDIO_", "SPACE"))}
    return subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), *args],
        env={**clean, "HF_HUB_OFFLINE": "1", **env},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_listen_without_auth_is_refused_in_one_line(tmp_path):
    process = app_py(["--listen", "--outputs", str(tmp_path)], {})
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [
        "app.py: error: Serving beyond this machine (--listen, --host or --share) requires --auth USER:PASSWORD."
    ]


def test_an_open_address_without_login_is_logged_as_a_warning(tiny_dir, tmp_path):
    port = free_port()
    env = {"SPACE_ID": "someone/atelier", "STUDIO_MODEL": "tiny", "STUDIO_TINY_DIR": str(tiny_dir)}
    process = app_py(["--port", str(port), "--outputs", str(tmp_path), "--no-preload"], env)
    lines: queue.Queue[str] = queue.Queue()
    stderr = process.stderr
    assert stderr is not None
    threading.Thread(target=lambda: [lines.put(line) for line in stderr], daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(" WARNING " in line for line in seen):
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                if process.poll() is not None:
                    break
    finally:
        process.kill()
        process.wait(timeout=30)
    warning = next((line for line in seen if " WARNING " in line), "")
    assert f"0.0.0.0:{port}" in warning and "anyone" in warning, "".join(seen)


# ---- 11. schedule types A1111 reads -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(running_app) -> Client:
    url, _ = running_app
    return Client(url, verbose=False)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_each_samplers_png_restores_to_the_same_sampler(client, sampler):
    gallery, _, infotext = client.predict(
        prompt="coat", num_inference_steps=2, scheduler=sampler, seed=11, api_name="/txt2img"
    )
    params = parse_infotext(infotext).params
    assert params["Schedule type"] == SAMPLERS[sampler].schedule_type  # every sampler names its schedule
    mode, values, note = client.predict(png=handle_file(gallery[0]["image"]), api_name="/restore")
    assert (mode, values["scheduler"]) == ("txt2img", sampler), note


def test_plain_dpm_2m_png_says_uniform_so_a1111_does_not_run_karras(client):
    # A1111 >= 1.9 reads a missing `Schedule type` as "Automatic", which for its DPM++ 2M is Karras
    # (sd_samplers_kdiffusion: {'scheduler': 'karras'}). Diffusers' DPMSolverMultistep without Karras sigmas steps
    # evenly through the training timesteps: A1111's "Uniform" (the model's own discrete sigmas, get_sigmas(n)).
    gallery, _, _ = client.predict(
        prompt="coat", num_inference_steps=2, scheduler="DPM++ 2M", seed=12, api_name="/txt2img"
    )
    with Image.open(gallery[0]["image"]) as image:
        params = parse_infotext(read_parameters(image) or "").params
    assert (params["Sampler"], params["Schedule type"]) == ("DPM++ 2M", "Uniform")
