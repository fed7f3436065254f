"""The GPU lock covers GPU work only: no PNG encode, file write or hash runs in a thread while that thread holds it,
in any mode; images are still written before they are shown, in order; the next request denoises while the
previous one's file is being written."""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from studio import hashing, outputs, styles
from studio.batching import Txt2ImgBatcher
from studio.cache import ModelCache
from studio.engine import draft as draft_engine
from studio.engine import saving
from studio.engine.contract import Cancelled, Generated, Job, Result, Studio
from studio.engine.draft import DraftChoice, DraftRequest, draft, render_draft
from studio.engine.inpaint import InpaintRequest, inpaint
from studio.engine.refine import RefineRequest, refine
from studio.engine.restyle import RestyleRequest, detect_edges, restyle
from studio.engine.textile import TextileRequest, textile
from studio.engine.txt2img import Txt2ImgRequest, txt2img, txt2img_many
from studio.metadata import read_parameters
from studio.outputs import Outputs
from tests.conftest import make_settings

PROMPT = "photo of a linen shirt dress, studio light"
FAST: dict[str, Any] = {"num_inference_steps": 2, "seed": 5}


@dataclass
class WatchedLock:
    """The cache's re-entrant lock, knowing whether the calling thread holds it."""

    inner: Any
    local: threading.local = field(default_factory=threading.local)
    holds: int = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = bool(self.inner.acquire(blocking, timeout))
        if got:
            self.local.depth = getattr(self.local, "depth", 0) + 1
            self.holds += 1
        return got

    def release(self) -> None:
        self.local.depth -= 1
        self.inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def held(self) -> bool:
        return getattr(self.local, "depth", 0) > 0


@dataclass
class Watch:
    lock: WatchedLock
    under_lock: list[str] = field(default_factory=list)  # "what (thread)" for each watched call made holding it
    calls: dict[str, int] = field(default_factory=dict)  # watched calls made without it

    def guard(self, what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.lock.held():
                self.under_lock.append(f"{what} ({threading.current_thread().name})")
            else:
                self.calls[what] = self.calls.get(what, 0) + 1
            return fn(*args, **kwargs)

        return guarded


@pytest.fixture(scope="module")
def studio(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Studio:
    settings = make_settings(
        tiny_dir,
        tmp_path_factory.mktemp("lock-outputs"),
        lora_dir=tiny_dir / "loras",
        embeddings_dir=tiny_dir / "embeddings",
    )
    return Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))


@pytest.fixture
def watch(studio: Studio, monkeypatch: pytest.MonkeyPatch) -> Iterator[Watch]:
    """Every PNG encode, file write, fsync and hash, recorded with whether its thread held the GPU lock."""
    watch = Watch(WatchedLock(studio.cache._lock))
    monkeypatch.setattr(studio.cache, "_lock", watch.lock)
    guarded = [
        (Image.Image, "save", "PNG encode (Image.save)"),
        (Outputs, "save", "Outputs.save"),
        (Outputs, "write_text", "Outputs.write_text"),
        (outputs, "atomic_write", "atomic write"),
        (os, "fsync", "fsync"),
        (hashing, "checkpoint_hash", "model hash"),
        (hashing, "_sha256", "SHA-256 of a file"),
        (draft_engine, "addnet_hash", "LCM-LoRA hash"),
        (styles, "addnet_hash", "LoRA hash"),
        (styles, "file_hash", "embedding hash"),
        (ModelCache, "model_hash", "model hash"),
    ]
    for owner, name, what in guarded:
        monkeypatch.setattr(owner, name, watch.guard(what, getattr(owner, name)))
    yield watch


def photo(size: int = 64) -> Image.Image:
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    ImageDraw.Draw(image).ellipse((16, 12, 48, 56), fill=(150, 40, 60))
    return image


def sleeve_mask(size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 40, 40), fill=255)
    return mask


def sketch(size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).polygon([(24, 6), (40, 6), (56, 58), (8, 58)], outline="white", width=2)
    return image


def batched(studio: Studio) -> object:
    """Two designers' requests in one UNet batch, through the batcher as the app runs them."""
    batcher = Txt2ImgBatcher(studio, window_ms=200)
    requests = [Txt2ImgRequest(prompt=p, batch_size=2, **FAST) for p in (PROMPT, "photo of a wool coat")]
    threads = [threading.Thread(target=batcher, args=(req,)) for req in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return None


MODES: dict[str, Callable[[Studio], object]] = {
    "txt2img, 2 batches of 2": lambda s: txt2img(s, Txt2ImgRequest(PROMPT, batch_size=2, batch_count=2, **FAST)),
    "txt2img, batched requests": batched,
    "txt2img, a LoRA and an embedding": lambda s: txt2img(
        s, Txt2ImgRequest(PROMPT + ", houseprint <lora:house-florals:0.7>", batch_size=2, **FAST)
    ),
    "txt2img_many": lambda s: txt2img_many(s, [Txt2ImgRequest(PROMPT, **FAST)] * 2, [None, None]),
    "refine, 2 loops x 2 chains, colour correction": lambda s: refine(
        s, RefineRequest(photo(), PROMPT, strength=0.5, loops=2, batch_size=2, color_correction=True, **FAST)
    ),
    "textile, print file and colourway": lambda s: textile(
        s, TextileRequest(PROMPT, batch_count=2, physical_width=1.0, dpi=300, colors=3, **FAST)
    ),
    "textile, swatch, half-drop": lambda s: textile(
        s, TextileRequest(PROMPT, image=photo(), repeat="half_drop", width=64, height=128, strength=0.5, **FAST)
    ),
    "inpaint, only masked, latent noise": lambda s: inpaint(
        s,
        InpaintRequest(
            photo(), sleeve_mask(), PROMPT, inpaint_area="only_masked", masked_content="latent_noise", **FAST
        ),
    ),
    "inpaint, fill, 2 batches": lambda s: inpaint(
        s, InpaintRequest(photo(), sleeve_mask(), PROMPT, masked_content="fill", batch_count=2, **FAST)
    ),
    "restyle, HED": lambda s: restyle(s, RestyleRequest(photo(), PROMPT, **FAST)),
    "restyle, sketch, repeat": lambda s: restyle(
        s, RestyleRequest(sketch(), PROMPT, preprocessor="none", repeat="full", **FAST)
    ),
    "restyle edges preview": lambda s: detect_edges(s, photo()),
    "draft": lambda s: draft(s, DraftRequest(PROMPT, seed=5, batch_size=2)),
    "render draft": lambda s: render_draft(
        s, DraftChoice(PROMPT, "", 5, 64, 64), Txt2ImgRequest(PROMPT, num_inference_steps=2)
    ),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_no_png_encode_file_write_or_hash_runs_while_its_thread_holds_the_gpu_lock(studio, watch, mode):
    MODES[mode](studio)
    assert watch.under_lock == []
    assert watch.lock.holds > 0  # the mode did take the watched lock
    if mode != "restyle edges preview":  # the watch sees the work it guards: it ran, outside the lock
        assert {"PNG encode (Image.save)", "atomic write", "fsync", "model hash"} <= set(watch.calls), watch.calls


def test_the_watch_catches_a_png_written_under_the_lock(studio, watch):
    with studio.cache.gpu():
        photo().save(studio.outputs.root / "under-the-lock.png")
    assert watch.under_lock == [f"PNG encode (Image.save) ({threading.current_thread().name})"]


# ---- written before shown, in order; the next request does not wait for a file ---------------------------------
@dataclass
class HeldBack:
    started: threading.Event = field(default_factory=threading.Event)  # the first PNG's write has begun
    release: threading.Event = field(default_factory=threading.Event)  # ... and may finish


@pytest.fixture
def slow_first_write(studio: Studio, monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldBack]:
    """The first PNG written waits until `release` is set; every other write runs at once."""
    held, first = HeldBack(), threading.Lock()
    save = Outputs.save

    def held_back(self: Outputs, *args: Any, **kwargs: Any) -> Path:
        if first.acquire(blocking=False):
            held.started.set()
            assert held.release.wait(60)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Outputs, "save", held_back)
    yield held
    held.release.set()


def test_a_request_prepares_its_pipeline_while_another_one_holds_the_gpu(studio, monkeypatch):
    """Looking up the resident model, its derived pipeline's template and companions takes no lock: a request is
    ready to denoise the moment the GPU is free."""
    txt2img(studio, Txt2ImgRequest(PROMPT, **FAST))  # the model and txt2img's template are resident
    derived, busy, free = threading.Event(), threading.Event(), threading.Event()
    derive = ModelCache.derive

    def watched(self: ModelCache, *args: Any, **kwargs: Any) -> Any:
        pipe = derive(self, *args, **kwargs)
        derived.set()
        return pipe

    def another_request() -> None:
        with studio.cache.gpu():
            busy.set()
            assert free.wait(60)

    monkeypatch.setattr(ModelCache, "derive", watched)
    holder = threading.Thread(target=another_request)
    holder.start()
    assert busy.wait(60)
    runner = threading.Thread(target=txt2img, args=(studio, Txt2ImgRequest(PROMPT, **FAST)))
    runner.start()
    try:
        assert derived.wait(30)  # made while the other request still holds the GPU
    finally:
        free.set()
        holder.join()
        runner.join()


def test_each_image_is_told_after_its_file_is_complete_and_in_the_order_made(studio, slow_first_write):
    told: list[tuple[int, bool, str | None]] = []

    def on_image(generated: Generated) -> None:
        with Image.open(generated.path) as written:
            told.append((generated.seed, generated.path.is_file(), read_parameters(written)))

    runner = threading.Thread(
        target=txt2img, args=(studio, Txt2ImgRequest(PROMPT, batch_size=3, **FAST), Job(on_image=on_image))
    )
    runner.start()
    assert slow_first_write.started.wait(60)
    time.sleep(1.0)  # images 2 and 3 are written meanwhile: still none is told before image 1
    assert told == []
    slow_first_write.release.set()
    runner.join()
    assert [seed for seed, _, _ in told] == [5, 6, 7]
    assert all(is_file and parameters and "Seed: " in parameters for _, is_file, parameters in told)


def test_the_next_request_denoises_while_the_previous_image_is_still_being_written(studio, slow_first_write):
    first: list[Result] = []
    runner = threading.Thread(target=lambda: first.append(txt2img(studio, Txt2ImgRequest(PROMPT, **FAST))))
    runner.start()
    assert slow_first_write.started.wait(60)
    second = txt2img(studio, Txt2ImgRequest("photo of a wool coat", **FAST))  # needs the GPU lock: it is free
    assert second.paths[0].is_file() and not first  # done while the first request's PNG is held back
    slow_first_write.release.set()
    runner.join()
    assert first[0].paths[0].is_file()


def test_a_cancel_keeps_and_tells_the_images_finished_before_it(studio, slow_first_write):
    steps: list[int] = []
    told: list[Generated] = []
    job = Job(on_image=told.append)

    def on_step(step: int, total: int) -> None:
        steps.append(step)
        if len(steps) == 3:  # the first step of the second batch: Cancel, and only then may batch 1's PNG finish
            job.cancel.set()
            slow_first_write.release.set()

    job.on_step = on_step
    with pytest.raises(Cancelled):
        txt2img(studio, Txt2ImgRequest(PROMPT, batch_count=3, **FAST), job)
    assert [g.seed for g in told] == [5] and told[0].path.is_file()


def test_progress_and_saved_images_reach_the_callers_context_from_two_threads(studio):
    """A batched caller's images are told from a writer thread while the batch's thread reports the next batch's
    progress: both enter the caller's context, one at a time."""
    caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="?")
    seen: list[str] = []

    def slow_on_image(generated: Generated) -> None:
        seen.append(caller.get())
        time.sleep(0.3)  # still inside the caller's context when the next step is reported

    job = Job(on_step=lambda step, total: seen.append(caller.get()), on_image=slow_on_image)
    batcher = Txt2ImgBatcher(studio, window_ms=1)

    def call() -> Result:
        caller.set("designer")
        return batcher(Txt2ImgRequest(PROMPT, batch_count=3, **FAST), job)

    result = contextvars.copy_context().run(call)
    assert len(result.images) == 3
    assert set(seen) == {"designer"} and len(seen) == 3 * 2 + 3


# ---- a writer thread does not start while the lock's holder is still leaving -----------------------------------
ONE_BATCH: dict[str, Callable[[Studio], object]] = {
    "txt2img": lambda s: txt2img(s, Txt2ImgRequest(PROMPT, batch_size=2, **FAST)),
    "inpaint": lambda s: inpaint(s, InpaintRequest(photo(), sleeve_mask(), PROMPT, **FAST)),
    "restyle": lambda s: restyle(s, RestyleRequest(sketch(), PROMPT, preprocessor="none", **FAST)),
    "textile": lambda s: textile(s, TextileRequest(PROMPT, **FAST)),
    "draft": lambda s: draft(s, DraftRequest(PROMPT, seed=5, batch_size=2)),
}


@pytest.mark.parametrize("mode", list(ONE_BATCH))
def test_the_last_batch_is_handed_to_the_writers_only_after_the_gpu_lock_is_released(studio, watch, monkeypatch, mode):
    """A writer thread started while the lock's holder still runs Python competes with it for the GIL (up to a 5 ms
    switch interval with the GPU idle): a run's last writes start once the lock is released."""
    handed: list[bool] = []  # for each write handed to a writer thread: did the handing thread hold the lock?
    pool = saving.writer_pool()

    class Watched:
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            handed.append(watch.lock.held())
            return pool.submit(*args, **kwargs)

    monkeypatch.setattr(saving, "writer_pool", Watched)
    ONE_BATCH[mode](studio)
    assert handed and not any(handed), handed
