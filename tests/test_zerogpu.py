"""ZeroGPU: every GPU handler is a `spaces.GPU` section; under ZeroGPU's contract (forked worker, pickled arguments
and results, changes in the worker lost — tests/fake_zerogpu.py) every mode still answers, no section loads weights,
and Cancel reaches the worker. Without `spaces`, and with `spaces` off ZeroGPU, the handlers are untouched."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator

import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
from studio import registry, zerogpu
from studio.jobs import JobBoard
from studio.modes import BUILTIN, gpu_endpoints
from studio.settings import Settings
from tests.conftest import REPO, free_port, make_settings
from tests.fake_zerogpu import FakeSpaces

pytestmark = pytest.mark.slow
GPU_ENDPOINTS = gpu_endpoints(BUILTIN)  # from the mode records: each mode, drafts, the edge preview


@pytest.fixture(scope="module")
def zero(tiny_dir, tmp_path_factory) -> Iterator[tuple[Client, FakeSpaces, list[str]]]:
    """The studio as a ZeroGPU Space runs it: everything loaded before serving, GPU handlers in forked workers."""
    settings = make_settings(
        tiny_dir,
        tmp_path_factory.mktemp("zero-outputs"),
        port=free_port(),
        zero_gpu=True,
        preload=True,
        batch_window_ms=0,
    )  # what SPACES_ZERO_GPU sets (test below)
    studio = app.create_studio(settings)
    fake = FakeSpaces(probe=lambda: sorted(row.name for row in studio.cache.resident()))
    mp = pytest.MonkeyPatch()
    mp.setattr(zerogpu, "spaces_module", lambda: fake)
    try:
        demo = app.build_demo(studio)
        app.start_preload(studio)  # synchronous on ZeroGPU: before the first fork
        resident = sorted(row.name for row in studio.cache.resident())
        app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
        try:
            yield Client(f"http://127.0.0.1:{settings.port}/", verbose=False), fake, resident
        finally:
            demo.close()
    finally:
        mp.undo()


def test_zero_gpu_settings_preload_and_do_not_batch():
    settings = Settings.from_env({"SPACE_ID": "atelier/studio", "SPACES_ZERO_GPU": "true"})
    assert settings.zero_gpu and settings.preload and settings.batch_window_ms == 0
    assert not Settings.from_env({"SPACE_ID": "atelier/studio"}).zero_gpu


def test_every_mode_answers_from_a_forked_worker_with_everything_preloaded(zero, tmp_path):
    client, fake, resident = zero
    kinds = " ".join(resident)
    for part in ("tiny", "controlnet", "annotator", "inpaint", "lcm", "preview_decoder"):
        assert part in kinds, f"{part} not loaded before serving: {resident}"
    sketch, photo = tmp_path / "sketch.png", tmp_path / "photo.png"
    Image.open(REPO / "assets" / "dress_sketch.png").save(sketch)
    Image.open(REPO / "assets" / "tshirt_flatlay.png").convert("RGB").resize((64, 64)).save(photo)
    mask = tmp_path / "mask.png"
    square = Image.new("L", (64, 64), 0)
    square.paste(255, (16, 16, 48, 48))
    square.save(mask)

    gallery, seed, _ = client.predict(
        prompt="a wrap dress", num_inference_steps=2, seed=3, width=64, height=64, api_name="/txt2img"
    )
    assert seed == 3 and os.path.exists(gallery[0]["image"])
    gallery, _, _ = client.predict(
        prompt="a wrap dress", num_inference_steps=2, seed=3, width=64, height=64, api_name="/draft"
    )
    assert gallery
    shown, _, _ = client.predict(
        image=handle_file(str(photo)),
        prompt="linen",
        num_inference_steps=2,
        strength=0.5,
        loops=2,
        seed=5,
        api_name="/refine",
    )
    assert len(shown) == 2  # a generator: every loop came back from the worker
    _, nodes = client.predict(api_name="/refine_history")  # and the session's tree grew in the main process
    assert len(nodes) == 3
    tiles = client.predict(
        prompt="a tulip print",
        repeat="full",
        width=64,
        height=64,
        image=None,
        num_inference_steps=2,
        seed=4,
        api_name="/textile",
    )
    assert tiles[0]
    gallery, _, _ = client.predict(
        editor=None,
        image=handle_file(str(photo)),
        mask_image=handle_file(str(mask)),
        prompt="a patch pocket",
        num_inference_steps=2,
        seed=6,
        api_name="/inpaint",
    )
    assert gallery
    edge, _ = client.predict(
        handle_file(str(sketch)), "hed", False, True, 512, 64, 64, "off", api_name="/restyle_edges"
    )
    assert Image.open(edge).size == (64, 64)
    gallery, _, _ = client.predict(
        handle_file(str(sketch)),
        "hed",
        False,
        True,
        512,
        1.0,
        0.0,
        1.0,
        False,
        "gouache gown",
        "",
        2,
        7.0,
        "Euler",
        5,
        1,
        1,
        64,
        64,
        "off",
        api_name="/restyle",
    )
    assert gallery

    names = {call.name for call in fake.calls}
    assert {"txt2img", "draft", "refine", "textile", "inpaint", "preview_edges", "restyle"} <= names, names
    assert all(call.pid != os.getpid() for call in fake.calls)
    # What a worker changes is lost on ZeroGPU: no section may load weights (it would reload them on every call).
    assert all(call.probe == resident for call in fake.calls), [(c.name, c.probe) for c in fake.calls]
    assert set(fake.durations) == {Settings().zero_gpu_duration}


def test_an_error_in_a_worker_reaches_the_designer_in_words_and_the_app_keeps_serving(zero):
    client, _, _ = zero
    with pytest.raises(Exception, match="multiple of 8"):
        client.predict(prompt="coat", width=100, num_inference_steps=2, api_name="/txt2img")
    gallery, seed, _ = client.predict(
        prompt="coat", num_inference_steps=2, seed=1, width=64, height=64, api_name="/txt2img"
    )
    assert seed == 1 and gallery


def test_every_gpu_endpoint_is_marked_and_nothing_else(tiny_dir, tmp_path, monkeypatch):
    fake = FakeSpaces()
    monkeypatch.setattr(zerogpu, "spaces_module", lambda: fake)
    demo = app.build_demo(app.create_studio(make_settings(tiny_dir, tmp_path)))
    marked = {dep.api_name for dep in demo.fns.values() if hasattr(dep.fn, "zerogpu")}
    named = {dep.api_name for dep in demo.fns.values() if dep.api_name and dep.api_visibility == "public"}
    assert GPU_ENDPOINTS <= marked
    assert not (named - GPU_ENDPOINTS) & marked, "only GPU work belongs in a GPU section"


def test_without_spaces_or_off_zero_gpu_handlers_are_untouched(monkeypatch):
    def handler(prompt: str) -> str:
        return prompt

    monkeypatch.setattr(zerogpu, "spaces_module", lambda: None)
    assert zerogpu.gpu_section(Settings())(handler) is handler
    import spaces  # the real package (requirements-dev): a no-op anywhere but ZeroGPU

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert zerogpu.gpu_section(Settings(), spaces)(handler) is handler


def _job_in_another_process(board: JobBoard, started, stopped) -> None:
    job = board.start("session-a")
    started.set()
    deadline = time.monotonic() + 30
    while not job.cancel.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    if job.cancel.is_set():
        stopped.set()
    board.finish("session-a", job)
    os._exit(0)


def test_cancel_pressed_in_the_main_process_stops_a_job_in_a_forked_worker():
    board = JobBoard(shared=True)
    fork = multiprocessing.get_context("fork")
    started, stopped = fork.Event(), fork.Event()
    assert not board.cancel("session-a")  # nothing running: nothing to stop
    worker = fork.Process(target=_job_in_another_process, args=(board, started, stopped))
    worker.start()
    assert started.wait(30)
    assert not board.cancel("session-b")  # another session's Cancel does not touch it
    assert board.cancel("session-a")
    worker.join(30)
    assert stopped.is_set()
    assert not board.cancel("session-a")  # finished: the flags are gone
    assert sorted(p.name for p in board.folder.iterdir()) == []


def test_a_cancel_before_a_run_starts_is_not_carried_into_it():
    board = JobBoard(shared=True)
    job = board.start("s")
    assert board.cancel("s")
    board.finish("s", job)
    assert not board.start("s").cancel.is_set()


def test_shared_board_never_uses_the_session_id_as_a_path():
    board = JobBoard(shared=True)
    board.start("../../etc/passwd")
    assert [p.parent for p in board.folder.iterdir()] == [board.folder]
    assert all(".." not in p.name and "passwd" not in p.name for p in board.folder.iterdir())


def test_a_model_switch_on_zero_gpu_loads_every_companion_in_the_main_process(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(zerogpu, "spaces_module", lambda: FakeSpaces())
    studio = app.create_studio(make_settings(tiny_dir, tmp_path, zero_gpu=True))
    demo = app.build_demo(studio)
    switch = next(dep.fn for dep in demo.fns.values() if getattr(dep.fn, "__name__", "") == "switch")
    list(switch("tiny"))
    kinds = {row.kind for row in studio.cache.resident()}
    more = {*registry.CONTROL_COMPANIONS, *registry.ANNOTATOR_FILES}  # Restyle's further ControlNets and annotators
    assert kinds == {"base", "controlnet", "annotator", "inpaint_unet", "adapter", "preview_decoder", *more}, kinds
