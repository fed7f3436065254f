"""The served studio: named endpoints answer through gradio_client with metadata-carrying PNGs; errors are words."""

from __future__ import annotations

import inspect

import gradio as gr
import pytest
from gradio_client import Client
from PIL import Image

import app
from studio.metadata import parse_infotext, read_parameters
from tests.conftest import free_port, make_settings

NON_API = {"request", "progress"}


@pytest.fixture(scope="module")
def client(running_app):
    url, _ = running_app
    return Client(url, verbose=False)


def test_txt2img_endpoint_returns_png_files_with_metadata_and_seed(client):
    gallery, seed, infotext = client.predict(
        prompt="a wrap dress in emerald silk",
        negative_prompt="blurry",
        num_inference_steps=3,
        seed=77,
        api_name="/txt2img",
    )
    assert seed == 77 and len(gallery) == 1
    with Image.open(gallery[0]["image"]) as image:
        assert image.format == "PNG"
        info = parse_infotext(read_parameters(image))
    assert info.prompt == "a wrap dress in emerald silk" and info.params["Seed"] == "77"
    assert infotext == read_parameters(Image.open(gallery[0]["image"]))


def test_bad_input_through_the_api_is_a_clear_error_and_the_app_keeps_serving(client):
    with pytest.raises(Exception, match="multiple of 8"):
        client.predict(prompt="coat", width=100, num_inference_steps=2, api_name="/txt2img")
    with pytest.raises(Exception, match="5000 is greater than maximum value 150"):  # Gradio bounds the slider
        client.predict(prompt="coat", num_inference_steps=5000, api_name="/txt2img")
    gallery, seed, _ = client.predict(prompt="coat", num_inference_steps=2, seed=1, api_name="/txt2img")
    assert seed == 1 and gallery


def test_every_named_endpoint_takes_exactly_its_handlers_named_parameters(tiny_dir, tmp_path):
    demo = app.build_demo(app.create_studio(make_settings(tiny_dir, tmp_path)))
    named = {dep.api_name: dep for dep in demo.fns.values() if dep.api_name and dep.api_visibility == "public"}
    assert "txt2img" in named
    for name, dep in named.items():
        params = [p for p in inspect.signature(dep.fn).parameters if p not in NON_API]
        assert len(params) == len(dep.inputs), name
        assert not any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(dep.fn).parameters.values()), name
    assert [p for p in inspect.signature(named["txt2img"].fn).parameters if p not in NON_API][:4] == [
        "prompt",
        "negative_prompt",
        "num_inference_steps",
        "guidance_scale",
    ]


def test_missing_model_gives_the_fix_and_the_server_still_answers(tiny_dir, tmp_path):
    settings = make_settings(tiny_dir, tmp_path, model="some-org/missing-model", port=free_port())
    demo = app.build_demo(app.create_studio(settings))
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{settings.port}/", verbose=False)
        for _ in range(2):
            with pytest.raises(Exception, match="some-org/missing-model.*--model tiny"):
                client.predict(prompt="coat", num_inference_steps=2, api_name="/txt2img")
    finally:
        demo.close()


def test_building_the_ui_loads_no_weights(tiny_dir, tmp_path):
    studio = app.create_studio(make_settings(tiny_dir, tmp_path))
    assert isinstance(app.build_demo(studio), gr.Blocks)
    assert studio.cache.resident() == []


def _handler(demo: gr.Blocks, name: str):
    return next(dep.fn for dep in demo.fns.values() if getattr(dep.fn, "__name__", "") == name)


def test_model_switcher_loads_a_listed_model_and_a_failed_switch_keeps_the_previous(tiny_dir, tmp_path):
    settings = make_settings(tiny_dir, tmp_path, model_choices=("tiny", "some-org/missing-model"))
    studio = app.create_studio(settings)
    demo = app.build_demo(studio)
    switch, refresh = _handler(demo, "switch"), _handler(demo, "refresh")
    assert "loads on first use" in refresh()[0] and refresh()[1].active  # the status line watches for a load
    (loading, watching), (done, stop) = switch("tiny")
    assert "Loading **tiny**" in loading and watching.active  # said at once, before the weights load
    assert "Current: **tiny**" in done and not stop.active and studio.cache.current == "tiny"
    assert not refresh()[1].active  # nothing loading, a model resident: the timer rests
    with pytest.raises(gr.Error, match="some-org/missing-model.*Still using tiny"):
        list(switch("some-org/missing-model"))
    with pytest.raises(gr.Error, match="Choose one of the listed models"):
        list(switch("/etc/passwd"))
    assert [r.name for r in studio.cache.resident()] == ["tiny"]


def test_public_demo_prefills_its_negative_prompt_in_every_tab(tiny_dir, tmp_path):
    settings = make_settings(tiny_dir, tmp_path, public_demo=True, default_negative_prompt="nsfw, nude")
    demo = app.build_demo(app.create_studio(settings))
    negatives = [c for c in demo.blocks.values() if isinstance(c, gr.Textbox) and c.label == "Negative prompt"]
    assert len(negatives) >= 5 and all(str(c.value).startswith("nsfw, nude") for c in negatives)


def test_importing_demo_builds_the_studio_from_the_environment(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_MODEL", "tiny")
    monkeypatch.setenv("STUDIO_TINY_DIR", str(tiny_dir))
    monkeypatch.setenv("STUDIO_OUTPUTS", str(tmp_path))
    monkeypatch.delattr(app, "demo", raising=False)
    from app import demo

    assert isinstance(demo, gr.Blocks)


def test_the_status_line_says_loading_while_a_load_holds_the_cache(tiny_dir, tmp_path):
    """A load holds the cache lock for its whole length: the status line must not wait on it to say so."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    studio = app.create_studio(make_settings(tiny_dir, tmp_path))
    refresh = _handler(app.build_demo(studio), "refresh")
    held, release = threading.Event(), threading.Event()

    def load() -> None:  # what ModelCache.base does during a load: the lock held, `loading` set
        with studio.cache.gpu():
            studio.cache.loading = "tiny"
            held.set()
            release.wait(30)
            studio.cache.loading = None

    with ThreadPoolExecutor(2) as pool:
        pool.submit(load)
        assert held.wait(30)
        try:
            text, timer = pool.submit(refresh).result(timeout=5)
        finally:
            release.set()
    assert text == "Loading tiny…" and timer.active
