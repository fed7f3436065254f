"""The studio as the front of a Ray Serve deployment (`--engine ray`): same pictures, nothing lost, Cancel reaches in.

One Ray cluster for the module, started the documented way (`python -m studio.serve up --replicas 2` on loopback)
and taken down (`down`) at the end; one Ray front and one local front (the single-process studio) on the tiny
checkpoint, driven through gradio_client with the same calls.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

import app
from studio.engine.contract import Studio
from studio.metadata import parse_infotext
from tests.conftest import REPO, free_port, make_settings, pixels

if TYPE_CHECKING:
    from studio.serve.client import RemoteEngine

pytestmark = pytest.mark.timeout(600)
FAST = {"num_inference_steps": 2, "width": 64, "height": 64}


@dataclass
class Fronts:
    ray_url: str
    local_url: str
    engine: RemoteEngine
    ray_studio: Studio
    folder: Path


def serve_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "studio.serve", *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def fronts(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fronts]:
    import studio.serve  # noqa: F401  (first: it keeps Ray on loopback; Ray is imported only by this module's tests)

    pytest.importorskip("ray")
    import ray

    from studio.serve.client import RemoteEngine

    folder = tmp_path_factory.mktemp("serve")
    address = f"127.0.0.1:{free_port()}"
    # replicas use this process's torch threads: a CPU convolution's rounding depends on how it is split
    env = {**os.environ, "STUDIO_MODEL": "tiny", "STUDIO_TINY_DIR": str(tiny_dir), "HF_HUB_OFFLINE": "1",
           "STUDIO_RAY_THREADS": str(torch.get_num_threads())}  # fmt: skip
    started = serve_cli("up", "--replicas", "2", "--address", address, "--port", address.split(":")[1],
                        "--no-dashboard", env=env)  # fmt: skip
    assert started.returncode == 0, started.stderr[-3000:]
    assert address in started.stdout
    demos = []
    try:
        ray_settings = make_settings(
            tiny_dir, folder / "ray-outputs", port=free_port(), engine="ray", ray_address=address,
            ray_min_replicas=2, ray_max_replicas=2,
        )  # fmt: skip
        engine = RemoteEngine(ray_settings)
        ray_studio = app.create_studio(ray_settings)
        demos.append(app.build_demo(ray_studio, engine=engine))
        app.launch(demos[-1], ray_settings, prevent_thread_lock=True, quiet=True)
        local_settings = make_settings(tiny_dir, folder / "local-outputs", port=free_port())
        demos.append(app.build_demo(app.create_studio(local_settings)))
        app.launch(demos[-1], local_settings, prevent_thread_lock=True, quiet=True)
        yield Fronts(
            f"http://127.0.0.1:{ray_settings.port}/", f"http://127.0.0.1:{local_settings.port}/", engine, ray_studio,
            folder,
        )  # fmt: skip
    finally:
        for demo in demos:
            demo.close()
        ray.shutdown()
        stopped = serve_cli("down", "--address", address, env=env)
        assert stopped.returncode == 0, stopped.stderr[-3000:]


def inputs(folder: Path) -> dict[str, Any]:
    photo, mask, sketch = folder / "photo.png", folder / "mask.png", folder / "sketch.png"
    if not photo.exists():
        Image.open(REPO / "assets" / "tshirt_flatlay.png").convert("RGB").resize((64, 64)).save(photo)
        square = Image.new("L", (64, 64), 0)
        square.paste(255, (16, 16, 48, 48))
        square.save(mask)
        Image.open(REPO / "assets" / "dress_sketch.png").resize((64, 96)).save(sketch)
    return {"photo": handle_file(str(photo)), "mask": handle_file(str(mask)), "sketch": handle_file(str(sketch))}


def calls(files: dict[str, Any]) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """One call per mode and per GPU action, by API name: (positional, keyword) arguments."""
    restyle = (files["sketch"], "hed", False, True, 512, 1.0, 0.0, 1.0, False, "gouache gown", "", 2, 7.0, "Euler",
               5, 1, 1, 64, 64, "off")  # fmt: skip
    return {
        "txt2img": ((), {"prompt": "a wrap dress", "seed": 3, "batch_size": 2, **FAST}),
        "refine": (
            (),
            {
                "image": files["photo"],
                "prompt": "linen",
                "num_inference_steps": 2,
                "strength": 0.5,
                "loops": 2,
                "seed": 5,
            },
        ),  # fmt: skip
        "textile": (
            (),
            {
                "prompt": "a tulip print",
                "repeat": "full",
                "image": None,
                "seed": 4,
                **FAST,
                "ip_adapter_image": [files["mask"]],
                "ip_adapter_scale": "1",
            },
        ),  # fmt: skip
        "inpaint": (
            (),
            {
                "editor": None,
                "image": files["photo"],
                "mask_image": files["mask"],
                "prompt": "a patch pocket",
                "num_inference_steps": 2,
                "seed": 6,
            },
        ),  # fmt: skip
        # a second ControlNet unit (canny of the photo) and an image prompt: lists of uploads travel as bytes too
        "restyle": (
            restyle,
            {
                "controlnet_units": [{"preprocessor": "canny"}],
                "control_image": [files["photo"]],
                "ip_adapter_image": [files["photo"]],
                "ip_adapter_scale": "0.8",
            },
        ),  # fmt: skip
        "restyle_edges": ((files["sketch"], "hed", False, True, 512, 64, 64, "off"), {}),
        "draft": ((), {"prompt": "a wrap dress", "seed": 3, **FAST}),  # an action that streams: LCM-LoRA drafts
    }


def images_in(value: Any) -> list[Path]:
    """Every image file a result shows, in order (galleries, single images, downloads)."""
    if isinstance(value, dict) and "image" in value:
        return images_in(value["image"])
    if isinstance(value, list | tuple):
        return [path for item in value for path in images_in(item)]
    if isinstance(value, str) and value.endswith((".png", ".webp")) and os.path.isfile(value):
        return [Path(value)]
    return []


def parameters(path: Path) -> dict[str, str]:
    with Image.open(path) as image:
        text = image.info.get("parameters")
    if text is None:
        return {}
    info = parse_infotext(text)
    return {"prompt": info.prompt, "negative_prompt": info.negative_prompt, **info.params}


def test_every_mode_through_the_ray_front_equals_the_local_engine(fronts: Fronts) -> None:
    ray_client, local_client = Client(fronts.ray_url, verbose=False), Client(fronts.local_url, verbose=False)
    for api, (args, kwargs) in calls(inputs(fronts.folder)).items():
        theirs = images_in(local_client.predict(*args, **kwargs, api_name=f"/{api}"))
        ours = images_in(ray_client.predict(*args, **kwargs, api_name=f"/{api}"))
        assert ours and len(ours) == len(theirs), api
        for mine, reference in zip(ours, theirs, strict=True):
            assert np.array_equal(pixels(mine), pixels(reference)), f"{api}: another picture than the local engine's"
            mine_params, reference_params = parameters(mine), parameters(reference)
            mine_params.pop("Parent", None), reference_params.pop("Parent", None)  # a file name, random
            assert mine_params == reference_params, api
        if api not in ("restyle_edges", "draft"):  # each result was written into the Ray front's own outputs folder
            stored = {p.read_bytes() for p in (fronts.folder / "ray-outputs").rglob("*.png")}
            assert all(path.read_bytes() in stored for path in ours), api


# ---- faults and Cancel ------------------------------------------------------------------------------------------
def replicas(engine: RemoteEngine, want: int = 2, timeout: float = 120) -> dict[int, int]:
    """Each replica's process id -> denoising steps it has finished, asked until `want` replicas answered."""
    seen: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < want:
        assert time.monotonic() < deadline, f"only {len(seen)} replica(s) answer: {seen}"
        try:
            pid, steps = engine.handle.activity.remote().result(timeout_s=30)
        except Exception:  # a replica on its way back
            time.sleep(0.2)
            continue
        seen[pid] = max(steps, seen.get(pid, 0))
    return seen


def wait_for_steps(engine: RemoteEngine, more_than: int, pid: int | None = None, timeout: float = 120) -> int:
    """Until the replicas (or the replica `pid`) finished more than `more_than` steps; returns the count."""
    deadline = time.monotonic() + timeout
    while True:
        seen = replicas(engine)
        count = seen.get(pid, 0) if pid is not None else sum(seen.values())
        if count > more_than:
            return count
        assert time.monotonic() < deadline, f"the replicas did only {count} steps"
        time.sleep(0.02)


def burst(seeds: range) -> list[dict[str, Any]]:
    return [{"prompt": f"a wool coat, look {seed}", "seed": seed, **FAST, "num_inference_steps": 12} for seed in seeds]


def test_a_replica_killed_mid_burst_loses_no_request_and_comes_back(fronts: Fronts, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="studio.serve.client")
    client = Client(fronts.ray_url, verbose=False)
    before = replicas(fronts.engine)
    requests = burst(range(700, 716))
    jobs = [client.submit(**request, api_name="/txt2img") for request in requests]
    victim = min(before)
    wait_for_steps(fronts.engine, before[victim] + 1, pid=victim)  # it is denoising its share of the burst
    os.kill(victim, signal.SIGKILL)
    outputs = [job.result(timeout=300) for job in jobs]
    assert "sending the request again" in caplog.text, "no request was in flight on the killed replica"
    assert [seed for _, seed, _ in outputs] == [request["seed"] for request in requests]
    local = Client(fronts.local_url, verbose=False)
    for request, (gallery, _, infotext) in zip(requests, outputs, strict=True):
        clean, _, clean_infotext = local.predict(**request, api_name="/txt2img")
        assert infotext == clean_infotext
        # the same picture as a clean run; the replica's batcher may round a batch's convolutions differently
        assert np.abs(pixels(gallery[0]["image"]) - pixels(clean[0]["image"])).max() <= 2
    after = replicas(fronts.engine)
    assert victim not in after and len(after) == 2, "Serve did not bring the killed replica back"


def test_a_cancelled_request_stops_the_replicas_unet_within_a_step(fronts: Fronts) -> None:
    client = Client(fronts.ray_url, verbose=False)
    start = sum(replicas(fronts.engine).values())
    job = client.submit(
        prompt="a long coat", num_inference_steps=150, batch_count=4, guidance_scale=1.0, width=64, height=64,
        api_name="/txt2img",
    )  # fmt: skip
    at_cancel = wait_for_steps(fronts.engine, start + 3)
    job.cancel()
    last, since = at_cancel, time.monotonic()
    while time.monotonic() - since < 1.5:  # until no step has come for 1.5 s
        time.sleep(0.05)
        if (now := sum(replicas(fronts.engine).values())) != last:
            last, since = now, time.monotonic()
    assert last - at_cancel <= 2, f"{last - at_cancel} steps after the cancel"  # the step under way (and its read)
    assert last - start < 150  # far from the 600 steps asked for


def test_a_failed_model_switch_keeps_the_previous_model_serving_everywhere(fronts: Fronts) -> None:
    from studio.errors import StudioError

    with pytest.raises(StudioError):
        fronts.engine.switch("no-such-model")
    assert fronts.engine.current == "tiny"
    client = Client(fronts.ray_url, verbose=False)
    for seed in (1, 2, 3):  # whichever replica answers still serves the tiny checkpoint
        _, _, infotext = client.predict(prompt="a coat", seed=seed, **FAST, api_name="/txt2img")
        assert "Model: tiny" in infotext
    text, _ = fronts.engine.status()
    assert "tiny" in text
