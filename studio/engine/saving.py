"""Where a result is written: its A1111 `parameters` (infotext) and the PNG in the outputs folder, off the GPU lock.

The GPU lock covers GPU work only. A mode hands each finished image to `Writes.submit` (submitting costs
microseconds, so it may do so while it still holds the lock) and denoises on; a writer thread turns the pipeline's
pixels into a picture, post-processes it, computes its metadata (the model hash too), encodes and fsyncs the PNG,
and only then tells the job (`on_image`): written before shown. A run's images reach the job in the order they were
submitted, whichever writer finished first. Leaving `with Writes(job) as writes:` waits for every write of the run,
also when the run fails or is cancelled, so an image finished before a Cancel is kept and reported.

A writer thread competes for the GIL: started while the lock's holder still has Python to run (handing over the
rest of a batch, leaving the pipeline), it can keep that thread waiting for a switch interval (5 ms) with the GPU
idle. `Writes(job, defer=True)` therefore only queues what is submitted; `flush()` starts the queue — a mode calls it
just before its next pipeline call, so the writes run while the GPU works, and leaving the `with` flushes the last
batch once the lock (entered after `Writes`, so left before it) is released.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from studio.engine.contract import Generated, Job, Studio
from studio.metadata import format_infotext
from studio.schedulers import get_sampler

WRITERS = 2  # PNG encoding releases the GIL: two writers keep up with any GPU, and leave the CPU to the server
T = TypeVar("T")


def base_params(
    studio: Studio, req: Any, seed: int, width: int, height: int, mode: str, model: str | None = None
) -> dict[str, Any]:
    """A1111's key order: Steps, Sampler, Schedule type, CFG scale, Seed, Size, Model hash, Model, ...

    `model`: the checkpoint the image was made with (default: the current one), named when the metadata is
    computed after the run, when a switch may have made another model current."""
    sampler = get_sampler(req.scheduler)
    ckpt = studio.cache.checkpoint(model)
    return {
        "Steps": req.num_inference_steps,
        "Sampler": sampler.a1111_sampler,
        "Schedule type": sampler.schedule_type,
        "CFG scale": req.guidance_scale,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": studio.cache.model_hash(model) or None,
        "Model": ckpt.name,
        **studio.cache.styles.recorded(req.prompt, req.negative_prompt),  # Lora hashes, TI hashes (or None)
        "Mode": mode,
    }


def to_pil(pixels: np.ndarray) -> Image.Image:
    """One image of a pipeline's `output_type="np"` output as the picture `output_type="pil"` gives: diffusers' own
    conversion, so not a pixel differs."""
    return VaeImageProcessor.numpy_to_pil(pixels)[0]


def save_image(
    studio: Studio,
    image: Image.Image,
    prompts: dict[str, str],
    params: dict[str, Any],
    mode: str,
    job: Job | None,
    dpi: int | None = None,
    name: str | None = None,
) -> Generated:
    """Write the PNG with its infotext (atomically), then tell the job: written before shown. `name`: the file's
    download name (`Outputs.save`)."""
    infotext = format_infotext(prompts["prompt"], prompts["negative_prompt"], params)
    level = studio.cache.settings.png_level
    path = studio.outputs.save(image, infotext, mode, dpi=(dpi, dpi) if dpi else None, compress_level=level, name=name)
    generated = Generated(path=path, image=image, seed=int(params["Seed"]), infotext=infotext)
    if job is not None and job.on_image is not None:
        job.on_image(generated)
    return generated


# ---- the writer threads ---------------------------------------------------------------------------------------
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def writer_pool() -> ThreadPoolExecutor:
    """The process's writer threads, started on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="atelier-writer")
        return _pool


def _forget_pool() -> None:
    """A forked process (a ZeroGPU worker) inherits the pool without its threads: it starts its own."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


class EarlierWriteFailed(Exception):
    """An earlier image of the same run could not be written: this one is not reported after it."""


class Writes:
    """One run's writes on the writer threads; see the module's docstring."""

    def __init__(self, job: Job | None, defer: bool = False) -> None:
        self.job = job
        self.defer = defer
        self._futures: list[Future[Any]] = []
        self._pending: list[Callable[[], None]] = []
        self._last_told: Future[Any] | None = None

    def submit(self, write: Callable[[], T], tell: bool = True) -> Future[T]:
        """Run `write()` on a writer thread (with `defer`, from the next `flush()`). With `tell`, its result goes to
        `job.on_image` once every image submitted before it has been told; an export (`tell=False`) is only
        written."""
        previous = self._last_told if tell else None
        future: Future[T] = Future()
        self._futures.append(future)
        if tell:
            self._last_told = future
        self._pending.append(lambda: self._start(future, write, previous, tell))
        if not self.defer:
            self.flush()
        return future

    def flush(self) -> None:
        """Start every write queued so far on the writer threads."""
        pending, self._pending = self._pending, []
        for start in pending:
            start()

    def _start(self, future: Future[T], write: Callable[[], T], previous: Future[Any] | None, tell: bool) -> None:
        future.set_running_or_notify_cancel()
        inner = writer_pool().submit(self._write, write, previous, tell)
        inner.add_done_callback(lambda done: _settle(future, done))

    def _write(self, write: Callable[[], T], previous: Future[Any] | None, tell: bool) -> T:
        result = write()
        if previous is not None and previous.exception() is not None:  # waits for it: submitted, so running
            raise EarlierWriteFailed("An earlier image of this run could not be written.")
        if tell and self.job is not None and self.job.on_image is not None:
            self.job.on_image(result)  # type: ignore[arg-type]  # what a mode tells is a Generated
        return result

    def wait(self) -> None:
        """Until every write submitted so far has finished (its errors stay in its future)."""
        self.flush()
        for future in self._futures:
            future.exception()

    def __enter__(self) -> Writes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wait()


def _settle(future: Future[T], done: Future[T]) -> None:
    """`done`'s outcome into `future` (what `Writes.submit` handed out before the write started)."""
    error = done.exception()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(done.result())


def done(value: T) -> Future[T]:
    """A future that already holds `value` (e.g. a parent image that needs no writing)."""
    future: Future[T] = Future()
    future.set_result(value)
    return future
