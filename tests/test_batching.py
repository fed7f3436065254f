"""Batching: concurrent txt2img requests share one UNet batch, and each caller still gets exactly its own images,
seeds and metadata, as if it had run alone."""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.batching import Txt2ImgBatcher
from studio.cache import ModelCache
from studio.engine.contract import Cancelled, Job, Result, Studio
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.metadata import parse_infotext, read_parameters
from studio.outputs import Outputs
from tests.conftest import make_settings, pixels

COAT = "photo of a double-breasted camel wool coat, studio light"
DRESS = "photo of an embroidered silk slip dress, soft light"
KNIT = "photo of a chunky cable-knit cardigan, cream, flat lay"
LONG = ", ".join(["tailored wool coat with notched lapels"] * 14) + ", bright red"  # past CLIP's 75 tokens


@pytest.fixture(scope="module")
def studio(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Studio:
    """A studio of this module's own: the tests count calls on its UNet."""
    settings = make_settings(tiny_dir, tmp_path_factory.mktemp("batching-outputs"))
    return Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))


@contextlib.contextmanager
def unet_batches(studio: Studio, fail_above: int | None = None) -> Iterator[list[int]]:
    """Batch size of every UNet forward (CFG doubles it); `fail_above` makes larger batches fail like an OOM."""
    seen: list[int] = []

    def hook(module: object, args: tuple) -> None:
        seen.append(int(args[0].shape[0]))
        if fail_above is not None and seen[-1] > fail_above:
            raise RuntimeError("simulated out of memory at a larger batch")

    handle = studio.cache.base().unet.register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def together(
    batcher: Txt2ImgBatcher,
    requests: list[Txt2ImgRequest],
    jobs: list[Job] | None = None,
    call: Callable[[Txt2ImgRequest, Job], Result] | None = None,
) -> list[Result | BaseException]:
    """Submit every request from its own thread while the GPU is held, so all of them are waiting before any runs."""
    jobs = jobs or [Job() for _ in requests]
    call = call or batcher
    outcomes: list[Result | BaseException | None] = [None] * len(requests)

    def submit(index: int) -> None:
        try:
            outcomes[index] = call(requests[index], jobs[index])
        except BaseException as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(requests))]
    with batcher.studio.cache.gpu():
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while batcher.waiting() < len(requests) and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=120)
    assert all(outcome is not None for outcome in outcomes)
    return outcomes  # type: ignore[return-value]


def alone(studio: Studio, req: Txt2ImgRequest) -> Result:
    return txt2img(studio, req)


def assert_same_pictures(result: Result, reference: Result) -> None:
    """Batched convolutions may round differently from a batch of one; each image must be the same picture."""
    assert [g.seed for g in result.images] == [g.seed for g in reference.images]
    for ours, theirs in zip(result.paths, reference.paths, strict=True):
        assert np.abs(pixels(ours) - pixels(theirs)).max() <= 2


def test_concurrent_requests_share_one_unet_batch_and_each_gets_its_own_images_seeds_and_metadata(studio):
    requests = [
        Txt2ImgRequest(prompt=COAT, num_inference_steps=3, seed=10, batch_size=2),
        Txt2ImgRequest(prompt=DRESS, negative_prompt="blurry, lowres", num_inference_steps=3, seed=20),
        Txt2ImgRequest(prompt=KNIT, num_inference_steps=3, seed=30, batch_count=2),
    ]
    steps: list[list[int]] = [[] for _ in requests]
    jobs = [Job(on_step=lambda step, total, mine=mine: mine.append(step)) for mine in steps]
    with unet_batches(studio) as batches:
        results = together(Txt2ImgBatcher(studio, window_ms=40), requests, jobs)
    assert batches == [2 * 5] * 3, "five images with CFG, one UNet batch per step"
    assert steps == [[1, 2, 3]] * 3, "each caller sees its own progress"
    assert len({path for result in results for path in result.paths}) == 5
    for req, result in zip(requests, results, strict=True):
        assert isinstance(result, Result)
        assert result.seed == req.seed
        assert [g.seed for g in result.images] == [req.seed + k for k in range(req.batch_size * req.batch_count)]
        for generated in result.images:
            with Image.open(generated.path) as image:
                info = parse_infotext(read_parameters(image))
            assert (info.prompt, info.negative_prompt) == (req.prompt, req.negative_prompt)
            assert info.params["Seed"] == str(generated.seed) and info.params["Size"] == "64x64"
        assert_same_pictures(result, alone(studio, req))


def test_each_request_previews_its_own_image(studio):
    requests = [
        Txt2ImgRequest(prompt=COAT, num_inference_steps=3, seed=80, batch_size=2),
        Txt2ImgRequest(prompt=DRESS, num_inference_steps=3, seed=90),
    ]

    def watching() -> tuple[Job, list]:
        seen: list = []
        return Job(on_preview=lambda image, step, total: seen.append((step, image)), preview_every=1), seen

    (coat_job, coat_seen), (dress_job, dress_seen) = watching(), watching()
    together(Txt2ImgBatcher(studio, window_ms=40), requests, [coat_job, dress_job])
    for req, seen in ((requests[0], coat_seen), (requests[1], dress_seen)):
        job, reference = watching()
        txt2img(studio, req, job)
        assert [step for step, _ in seen] == [step for step, _ in reference] == [1, 2]
        for (_, ours), (_, theirs) in zip(seen, reference, strict=True):
            assert np.abs(pixels(ours) - pixels(theirs)).max() <= 2
    assert not np.array_equal(pixels(coat_seen[-1][1]), pixels(dress_seen[-1][1]))


def test_callbacks_run_in_each_callers_own_context(studio):
    """Gradio's gr.Progress finds its event through contextvars: each caller's progress must reach its own bar."""
    caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller")
    requests = [Txt2ImgRequest(prompt=p, num_inference_steps=2, seed=5) for p in (COAT, DRESS, KNIT)]
    seen: dict[str, set[str]] = {req.prompt: set() for req in requests}

    def call(req: Txt2ImgRequest, job: Job) -> Result:
        caller.set(req.prompt)  # as Gradio sets its event id in the handler's thread
        return batcher(req, job)

    batcher = Txt2ImgBatcher(studio, window_ms=40)
    jobs = [Job(on_step=lambda step, total, mine=seen[r.prompt]: mine.add(caller.get("?"))) for r in requests]
    results = together(batcher, requests, jobs, call=call)
    assert all(isinstance(result, Result) for result in results)
    assert seen == {req.prompt: {req.prompt} for req in requests}


def test_long_prompts_batch_apart_from_short_ones_and_keep_every_word(studio):
    requests = [
        Txt2ImgRequest(prompt=COAT, num_inference_steps=2, seed=1),
        Txt2ImgRequest(prompt=LONG, num_inference_steps=2, seed=2),
        Txt2ImgRequest(prompt=LONG.replace("bright red", "deep green"), num_inference_steps=2, seed=2),
    ]
    with unet_batches(studio) as batches:
        short, red, green = together(Txt2ImgBatcher(studio, window_ms=40), requests)
    assert sorted(batches) == [2, 2, 4, 4], "chunked embeddings need equal lengths: one call per length"
    assert not np.array_equal(pixels(red.paths[0]), pixels(green.paths[0])), "words after token 77 must matter"
    for req, result in zip(requests, (short, red, green), strict=True):
        assert_same_pictures(result, alone(studio, req))


def test_incompatible_requests_are_not_merged(studio):
    base = {"prompt": COAT, "num_inference_steps": 2, "seed": 7}
    requests = [
        Txt2ImgRequest(**base),
        Txt2ImgRequest(**{**base, "height": 128}),
        Txt2ImgRequest(**{**base, "num_inference_steps": 3}),
        Txt2ImgRequest(**{**base, "guidance_scale": 3}),
        Txt2ImgRequest(**{**base, "scheduler": "Euler a"}),
    ]
    with unet_batches(studio) as batches:
        results = together(Txt2ImgBatcher(studio, window_ms=40), requests)
    assert batches == [2] * (2 + 2 + 3 + 2 + 2), "every request ran in a UNet batch of its own"
    for req, result in zip(requests, results, strict=True):  # a group of one is plain txt2img, bit for bit
        assert np.array_equal(pixels(result.paths[0]), pixels(alone(studio, req).paths[0]))


def test_batching_off_is_plain_txt2img_bit_for_bit(studio):
    requests = [
        Txt2ImgRequest(prompt=COAT, num_inference_steps=2, seed=3, batch_size=2),
        Txt2ImgRequest(prompt=DRESS, num_inference_steps=2, seed=4),
    ]
    batcher = Txt2ImgBatcher(studio, window_ms=0)
    assert batcher.concurrency == 1
    outcomes: list[Result] = []
    with unet_batches(studio) as batches:
        threads = [threading.Thread(target=lambda r=r: outcomes.append(batcher(r))) for r in requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert sorted(batches) == [2, 2, 4, 4]
    for result in outcomes:
        req = next(r for r in requests if r.seed == result.seed)
        reference = alone(studio, req)
        assert [g.infotext for g in result.images] == [g.infotext for g in reference.images]
        for ours, theirs in zip(result.paths, reference.paths, strict=True):
            assert np.array_equal(pixels(ours), pixels(theirs))


def test_a_request_with_no_partner_is_plain_txt2img_bit_for_bit(studio):
    req = Txt2ImgRequest(prompt=KNIT, num_inference_steps=2, seed=11, batch_size=2)
    result = Txt2ImgBatcher(studio, window_ms=40)(req)
    reference = alone(studio, req)
    assert [g.infotext for g in result.images] == [g.infotext for g in reference.images]
    for ours, theirs in zip(result.paths, reference.paths, strict=True):
        assert np.array_equal(pixels(ours), pixels(theirs))


def test_a_cancelled_request_leaves_the_others_images_and_saves_none_of_its_own(studio):
    requests = [
        Txt2ImgRequest(prompt=p, num_inference_steps=3, seed=s) for p, s in ((COAT, 40), (DRESS, 41), (KNIT, 42))
    ]
    jobs = [Job(), Job(), Job()]
    jobs[1].on_step = lambda step, total: jobs[1].cancel.set()
    before = set(studio.outputs.root.rglob("*.png"))
    first, cancelled, last = together(Txt2ImgBatcher(studio, window_ms=40), requests, jobs)
    assert isinstance(cancelled, Cancelled)
    assert set(studio.outputs.root.rglob("*.png")) - before == {*first.paths, *last.paths}
    assert_same_pictures(first, alone(studio, requests[0]))
    assert_same_pictures(last, alone(studio, requests[2]))


def test_a_batch_stops_when_every_request_is_cancelled(studio):
    requests = [Txt2ImgRequest(prompt=p, num_inference_steps=10, seed=1) for p in (COAT, DRESS)]
    jobs = [Job(), Job()]
    for job in jobs:
        job.on_step = lambda step, total, job=job: job.cancel.set()
    with unet_batches(studio) as batches:
        outcomes = together(Txt2ImgBatcher(studio, window_ms=40), requests, jobs)
    assert all(isinstance(outcome, Cancelled) for outcome in outcomes)
    assert len(batches) <= 2, "the run stops at the first step after the cancels"


def test_a_failing_request_gives_its_error_to_its_own_caller_only(studio):
    requests = [
        Txt2ImgRequest(prompt=p, num_inference_steps=2, seed=s)
        for p, s in ((COAT, 50), (DRESS, 51), (KNIT, 52), (COAT, 53))
    ]

    def disk_full(generated: object) -> None:
        raise OSError("disk full")

    def broken_progress(step: int, total: int) -> None:
        raise RuntimeError("progress bar gone")

    jobs = [Job(), Job(on_image=disk_full), Job(on_step=broken_progress), Job()]
    first, full, broken, last = together(Txt2ImgBatcher(studio, window_ms=40), requests, jobs)
    assert isinstance(full, OSError) and isinstance(broken, RuntimeError)
    assert_same_pictures(first, alone(studio, requests[0]))
    assert_same_pictures(last, alone(studio, requests[3]))


def test_a_batch_that_fails_as_a_whole_runs_its_requests_one_by_one(studio):
    requests = [Txt2ImgRequest(prompt=p, num_inference_steps=2, seed=60) for p in (COAT, DRESS, KNIT)]
    with unet_batches(studio, fail_above=2):  # only a batch of one image (CFG: 2) fits
        results = together(Txt2ImgBatcher(studio, window_ms=40), requests)
    for req, result in zip(requests, results, strict=True):
        assert isinstance(result, Result)
        assert np.array_equal(pixels(result.paths[0]), pixels(alone(studio, req).paths[0]))


def test_batches_and_other_modes_never_use_the_unet_at_the_same_time(studio):
    active, most = [0], [0]

    def enter(module: object, args: tuple) -> None:
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.005)  # widen the window in which an unlocked caller would overlap

    def leave(module: object, args: tuple, output: object) -> None:
        active[0] -= 1

    unet = studio.cache.base().unet
    handles = [unet.register_forward_pre_hook(enter), unet.register_forward_hook(leave)]
    batcher = Txt2ImgBatcher(studio, window_ms=40)
    calls = [lambda p=p: batcher(Txt2ImgRequest(prompt=p, num_inference_steps=3, seed=1)) for p in (COAT, DRESS)]
    calls += [lambda: txt2img(studio, Txt2ImgRequest(prompt=KNIT, num_inference_steps=3, seed=2, height=128))] * 2
    threads = [threading.Thread(target=call) for call in calls]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for handle in handles:
            handle.remove()
    assert most[0] == 1, "a batch ran the UNet while another mode held it"


def test_the_app_lets_concurrent_txt2img_calls_share_a_batch(running_app):
    from gradio_client import Client
    from gradio_client.utils import Status

    url, studio = running_app
    client = Client(url, verbose=False)
    args = [("", 2, 7.0, 64, 64, "DPM++ 2M Karras", seed, 1, 1) for seed in (70, 71, 72)]
    with unet_batches(studio) as batches:
        with studio.cache.gpu():  # hold the GPU: the queue must still start all three handlers
            jobs = [client.submit(p, *a, api_name="/txt2img") for p, a in zip((COAT, DRESS, KNIT), args, strict=True)]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(j.status().code != Status.PROCESSING for j in jobs):
                time.sleep(0.05)
            assert all(j.status().code == Status.PROCESSING for j in jobs), "the queue serialised txt2img calls"
            time.sleep(0.5)
        outputs = [job.result(timeout=120) for job in jobs]
    assert max(batches) >= 4, "at least two requests shared a UNet batch"
    assert [seed for _, seed, _ in outputs] == [70, 71, 72]
    for (prompt, *_), (gallery, _, infotext) in zip(((COAT,), (DRESS,), (KNIT,)), outputs, strict=True):
        assert len(gallery) == 1 and infotext.startswith(prompt)
