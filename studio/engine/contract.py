"""The typed engine contract: what every mode takes and gives, and nothing of Gradio.

A mode is `run(studio, request, job) -> Result`. The request is a frozen dataclass whose fields carry diffusers'
parameter names (`prompt`, `num_inference_steps`, `guidance_scale`, `seed`, ...); the `Job` carries the run's
cancel flag and where its events go; the `Result` holds the saved images and the parameters actually used.
Requests, results and events are plain dataclasses that pickle, so the same call crosses a process boundary
(a ZeroGPU worker, a Ray Serve replica) unchanged.

While a run works it reports through the job: `Progress` each denoising step, `Preview` pictures every
`job.preview_every` steps, `Saved` for each image as soon as it is written. `events()` turns one run into an
iterator of those events ending with `Finished(result)`: the form a streaming front (a Gradio generator, a Ray
streaming handle) consumes. Closing that iterator early cancels the run at its next denoising step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from PIL import Image

from studio.cache import ModelCache
from studio.errors import Cancelled
from studio.outputs import Outputs
from studio.settings import Limits

__all__ = ["Cancelled"]  # re-exported: callers of a run catch it beside the contract's types


class CancelFlag(Protocol):
    """What a run reads to stop early: a `threading.Event`, or `studio.jobs.FileFlag` across processes."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...


@dataclass
class Generated:
    """One image, written to the outputs folder with its `parameters` infotext before anyone is told of it."""

    path: Path
    image: Image.Image
    seed: int
    infotext: str


@dataclass
class Result:
    images: list[Generated]
    seed: int  # the first image's seed: re-running with it reproduces the whole batch
    params: dict[str, Any]

    @property
    def paths(self) -> list[Path]:
        return [g.path for g in self.images]


# ---- events -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    step: int
    total: int


@dataclass(frozen=True)
class Preview:
    image: Image.Image
    step: int
    total: int


@dataclass(frozen=True)
class Saved:
    generated: Generated


@dataclass(frozen=True)
class Finished:
    result: Result


Event = Progress | Preview | Saved | Finished


@dataclass
class Job:
    """Per-run controls handed in by the caller (a front, a script, a test)."""

    on_step: Callable[[int, int], None] | None = None
    cancel: CancelFlag = field(default_factory=threading.Event)
    on_image: Callable[[Generated], None] | None = None
    # live preview: on_preview(image, step, total) every `preview_every` steps (0 = never); see studio.preview
    on_preview: Callable[[Image.Image, int, int], None] | None = None
    preview_every: int = 0


@dataclass
class Studio:
    """What every mode runs against: settings' limits, the shared model cache and the outputs folder."""

    cache: ModelCache
    outputs: Outputs

    @property
    def limits(self) -> Limits:
        return self.cache.settings.limits


Req = TypeVar("Req")
Req_contra = TypeVar("Req_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


class Engine(Protocol[Req_contra, R_co]):
    """A mode's engine function: `run(studio, request, job) -> Result`."""

    def __call__(self, studio: Studio, request: Req_contra, job: Job | None = None, /) -> R_co: ...


def events(run: Callable[[Job], Result], job: Job | None = None) -> Iterator[Event]:
    """One run as an iterator of events, ending with `Finished(result)`; an error of the run is raised here.

    The run works on a thread of its own; the caller's `job` (if any) lends its cancel flag and preview cadence.
    Closing the iterator before the end (the client left, the front cancelled) sets the cancel flag and waits for
    the run to stop at its next denoising step, so the GPU is free when this returns."""
    job = job or Job()
    inbox: queue.Queue[Event | BaseException] = queue.Queue()
    job.on_step = lambda step, total: inbox.put(Progress(step, total))
    job.on_image = lambda generated: inbox.put(Saved(generated))
    job.on_preview = lambda image, step, total: inbox.put(Preview(image, step, total))

    def work() -> None:
        try:
            inbox.put(Finished(run(job)))
        except BaseException as exc:  # raised again in the consumer's thread
            inbox.put(exc)

    worker = threading.Thread(target=work, name="engine-run", daemon=True)
    worker.start()
    try:
        while True:
            item = inbox.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Finished):
                return
    finally:
        if worker.is_alive():
            job.cancel.set()
            worker.join()
