"""Bad parameters through Gradio's own doors get words that name the field: raw JSON with NaN (which gradio_client
refuses to send), out-of-range values Gradio itself checks, and prompts made only of invisible characters."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client

import app
from tests.conftest import free_port, make_settings


@pytest.fixture(scope="module")
def served(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(tiny_dir, tmp_path_factory.mktemp("params"), port=free_port())
    demo = app.build_demo(app.create_studio(settings))
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        demo.close()


def raw_call(url: str, api_name: str, values: dict[str, Any]) -> dict[str, Any]:
    """Join the queue with hand-written JSON (NaN allowed) and read the event's closing message."""
    config = httpx.get(f"{url}/config", timeout=30).json()
    dependency = next(d for d in config["dependencies"] if d.get("api_name") == api_name)
    info = httpx.get(f"{url}/gradio_api/info", timeout=30).json()["named_endpoints"][f"/{api_name}"]
    names = [p["parameter_name"] for p in info["parameters"]]
    defaults = {p["parameter_name"]: p.get("parameter_default") for p in info["parameters"]}
    session = uuid.uuid4().hex
    payload = {
        "data": [values.get(name, defaults[name]) for name in names],
        "fn_index": dependency["id"],
        "trigger_id": None,
        "session_hash": session,
        "event_data": None,
    }
    body = json.dumps(payload)  # Python writes NaN as the bare literal, as a hand-made client would
    joined = httpx.post(f"{url}/gradio_api/queue/join", content=body, headers={"content-type": "application/json"})
    assert joined.status_code == 200, joined.text
    with httpx.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}, timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return dict(message)
    raise AssertionError("the event never completed")


@pytest.mark.parametrize(
    ("api_name", "values", "words"),
    [
        ("txt2img", {"prompt": "coat", "seed": math.nan, "num_inference_steps": 2}, "Seed .*finite number"),
        ("textile", {"prompt": "print", "dpi": math.nan, "num_inference_steps": 2}, "DPI .*finite number"),
        ("txt2img", {"prompt": "coat", "guidance_scale": math.inf, "num_inference_steps": 2}, "CFG scale"),
    ],
)
def test_nan_and_infinite_numbers_in_raw_json_are_refused_naming_the_field(served, api_name, values, words):
    import re

    closing = raw_call(served, api_name, values)
    assert closing["success"] is False
    assert re.search(words, closing["output"]["error"]), closing["output"]["error"]


def test_an_out_of_range_value_names_its_field(served):
    client = Client(served + "/", verbose=False)
    with pytest.raises(Exception, match=r"Batch size \(batch_size\): Value 1000 is greater than maximum value 8"):
        client.predict(prompt="coat", batch_size=1000, num_inference_steps=2, api_name="/txt2img")


@pytest.mark.parametrize("prompt", ["\u202e\u202c", "\x07\x1b", "\u200b\u2066\u2069", "   \t "])
def test_a_prompt_of_invisible_characters_is_an_empty_prompt(served, prompt):
    client = Client(served + "/", verbose=False)
    with pytest.raises(Exception, match="The prompt is empty"):
        client.predict(prompt=prompt, num_inference_steps=2, api_name="/txt2img")
    gallery, seed, _ = client.predict(prompt="coat", num_inference_steps=2, seed=3, api_name="/txt2img")
    assert seed == 3 and gallery  # the studio keeps serving


def test_invisible_characters_never_reach_the_text_encoder() -> None:
    from studio.prompts import clean_prompt

    assert clean_prompt("a \u2066red\u2069 silk\u202e coat\x85\u2060", 100) == "a red silk coat"
