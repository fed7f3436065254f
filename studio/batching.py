"""Batching of concurrent txt2img requests: several designers' requests in one UNet batch.

A request that arrives while a compatible group is open joins it. Compatible means the same model, the same
personal styles (LoRAs and weights, embeddings or not) and the same `SHARED_FIELDS` (width, height, steps, CFG
scale, sampler): the pipeline takes one size, one schedule and one
guidance scale per call; prompts, negative prompts, seeds and batch sizes stay each request's own. A group closes
when its window has passed and the GPU is free, or when it holds `max_batch_size` images; it then runs as one
pipeline call (`txt2img_many`) on a thread of its own, and every caller gets its own `Result`.

- A group of one runs plain `txt2img`, bit for bit; so does everything with `batch_window_ms=0`.
- A cancelled request returns `Cancelled` at the next step and its images are dropped; the others' rows run on
  (a sampler keeps per-row state, so rows cannot leave a running schedule). A group whose every request is
  cancelled stops.
- If the batched call itself fails (e.g. out of memory at the larger batch), each unfinished request runs alone,
  so one request's failure reaches only its own caller.
- Callbacks (progress, images) run in the caller's `contextvars` context: Gradio's `gr.Progress` finds its event
  through contextvars, so progress reaches each caller's own bar even though another thread runs the batch.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from studio import image_prompt
from studio.engine.checks import check_common, clean_prompts
from studio.engine.contract import Job, Result, Studio
from studio.engine.txt2img import (
    OWN_FIELDS,
    SHARED_FIELDS,
    Outcome,
    Txt2ImgRequest,
    shared_params,
    txt2img,
    txt2img_many,
)

log = logging.getLogger(__name__)


def mergeable(req: Txt2ImgRequest) -> bool:
    """True when every field `txt2img_many` does not know keeps its default (fields added later run alone). So a
    request with an image prompt runs alone: only requests without one (equal image prompts) are merged."""
    known = set(SHARED_FIELDS) | set(OWN_FIELDS)
    if not req.ip_adapter_image:  # a weight and a model without pictures are no image prompt
        known |= set(image_prompt.FIELDS)
    return all(getattr(req, f.name) == f.default for f in dataclasses.fields(req) if f.name not in known)


def image_count(req: Txt2ImgRequest) -> int:
    return req.batch_size * req.batch_count


@dataclass
class _Ticket:
    request: Txt2ImgRequest
    job: Job
    context: contextvars.Context
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None

    def settle(self, outcome: Outcome) -> None:
        if not self.done.is_set():
            self.outcome = outcome
            self.done.set()

    def relay(self) -> Job:
        """The caller's job, with its callbacks run in the caller's context: from the batch's thread (progress,
        previews) and from a writer thread (saved images), one at a time (a context is entered by one thread at
        once)."""
        job, ctx, lock = self.job, self.context, threading.Lock()
        step_cb, image_cb, preview_cb = job.on_step, job.on_image, job.on_preview  # read once, so each stays narrowed

        def run(callback: Callable[..., object], *args: Any) -> None:
            with lock:
                ctx.run(callback, *args)

        on_step = (lambda step, total: run(step_cb, step, total)) if step_cb else None
        on_image = (lambda generated: run(image_cb, generated)) if image_cb else None
        on_preview = (lambda image, step, total: run(preview_cb, image, step, total)) if preview_cb else None
        return Job(
            on_step=on_step,
            cancel=job.cancel,
            on_image=on_image,
            on_preview=on_preview,
            preview_every=job.preview_every,
        )


@dataclass
class _Group:
    key: tuple[Any, ...]
    opened: float
    tickets: list[_Ticket] = field(default_factory=list)
    images: int = 0


class Txt2ImgBatcher:
    """`batcher(req, job) -> Result`, a drop-in for `txt2img(studio, req, job)` that merges concurrent calls.

    Call it without holding `studio.cache.gpu()`: the batch runs on another thread, which needs that lock."""

    def __init__(self, studio: Studio, window_ms: int | None = None, max_images: int | None = None) -> None:
        self.studio = studio
        settings = studio.cache.settings
        self.window = (settings.batch_window_ms if window_ms is None else window_ms) / 1000
        self.max_images = max_images or studio.limits.max_batch_size
        self._cond = threading.Condition()
        self._open: dict[tuple[Any, ...], _Group] = {}  # groups still taking requests, by compatibility key

    @property
    def concurrency(self) -> int:
        """How many txt2img calls may wait at once: enough to fill a batch, or 1 with batching off."""
        return self.max_images if self.window > 0 else 1

    def waiting(self) -> int:
        """Requests in groups that still take more (for tests and monitoring)."""
        with self._cond:
            return sum(len(group.tickets) for group in self._open.values())

    def __call__(self, req: Txt2ImgRequest, job: Job | None = None) -> Result:
        if self.window <= 0 or not mergeable(req) or image_count(req) >= self.max_images:
            return txt2img(self.studio, req, job)
        check_common(req, self.studio.limits)  # a bad request fails now, without taking a place in a batch
        styles = self.studio.cache.select_styles(clean_prompts(req, self.studio.limits)).key  # unknown LoRA: now
        ticket = _Ticket(req, job or Job(), contextvars.copy_context())
        group = self._join(ticket, styles)
        if group is not None:
            threading.Thread(target=self._run, args=(group,), name="txt2img-batch", daemon=True).start()
        ticket.done.wait()
        if isinstance(ticket.outcome, BaseException):
            raise ticket.outcome
        assert ticket.outcome is not None
        return ticket.outcome

    def _join(self, ticket: _Ticket, styles: tuple[Any, ...] = ()) -> _Group | None:
        """Add the ticket to its open group; returns the group when this ticket opened it (its runner starts).
        `styles`: the request's LoRAs and weights (and whether it names embeddings): they choose the UNet and text
        encoder of the one pipeline call, so only requests with equal styles share it."""
        key = (self.studio.cache.current, shared_params(ticket.request), styles)
        count = image_count(ticket.request)
        with self._cond:
            group = self._open.get(key)
            opened = group is None or group.images + count > self.max_images
            if opened:
                group = self._open[key] = _Group(key, time.monotonic())
            assert group is not None
            group.tickets.append(ticket)
            group.images += count
            if group.images >= self.max_images:  # full: closed to newcomers, and its runner stops waiting
                del self._open[key]
                self._cond.notify_all()
            return group if opened else None

    def _run(self, group: _Group) -> None:
        try:
            self._wait_window(group)
            with self.studio.cache.gpu():  # while the GPU is busy the group keeps taking requests
                self._close(group)
            self._execute(group.tickets)
        except BaseException as exc:  # never leave a caller waiting
            log.exception("txt2img batch failed")
            for ticket in group.tickets:
                ticket.settle(exc)

    def _wait_window(self, group: _Group) -> None:
        deadline = group.opened + self.window
        with self._cond:
            while self._open.get(group.key) is group and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)

    def _close(self, group: _Group) -> None:
        with self._cond:
            if self._open.get(group.key) is group:
                del self._open[group.key]

    def _execute(self, tickets: list[_Ticket]) -> None:
        if len(tickets) == 1:
            self._alone(tickets[0])
            return
        log.info("txt2img: %d requests in one batch", len(tickets))
        try:
            txt2img_many(
                self.studio,
                [t.request for t in tickets],
                [t.relay() for t in tickets],
                on_done=lambda index, outcome: tickets[index].settle(outcome),
            )
        except Exception:
            log.exception("A batch of %d txt2img requests failed; running them one by one", len(tickets))
            for ticket in tickets:
                if not ticket.done.is_set():
                    self._alone(ticket)

    def _alone(self, ticket: _Ticket) -> None:
        try:
            ticket.settle(txt2img(self.studio, ticket.request, ticket.relay()))
        except Exception as exc:
            ticket.settle(exc)
