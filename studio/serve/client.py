"""The studio as the front of a Ray Serve deployment: the one seam where a mode's run goes to a remote engine.

`RemoteEngine.bind(mode, studio)` gives the tab the same `ModeCalls` as `studio.modes.bind`, with `run(request, job)`
(and each action) sent to an Engine replica instead of this process. Everything around it (Gradio's queue,
progress, Cancel, previews, errors in words, the outputs folder) is the local studio's own code, unchanged:

- seeds are resolved here, before the first try, and uploads read into bytes (`studio.serve.wire`);
- the replica's events come back one by one: progress, previews, and each image, whose PNG the front writes into
  its outputs folder before the tab is told (`wire.unpack`);
- Cancel (the tab's button, a closed browser tab, an API client's cancel) sets the job's flag; a watcher cancels
  the stream at once, and the replica's run stops at its next denoising step;
- a replica that dies mid-run (`RETRIABLE`) costs a retry with the same request, so the same seed gives the same
  PNGs; `settings.ray_retries` bounds it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

from studio.engine.batches import resolve_seed
from studio.engine.contract import Finished, Generated, Job, Preview, Progress, Result, Saved, Studio
from studio.errors import Cancelled
from studio.modes import Mode, bind
from studio.serve.deploy import connect, listening
from studio.serve.replica import served_modes
from studio.serve.wire import IMAGE_FIELDS, Failed, as_bytes, inputs_as_bytes, unpack
from studio.settings import Settings
from studio.ui.tab import ModeCalls

log = logging.getLogger(__name__)
# A replica died or could not be reached: the request never finished there and is sent again (ActorDiedError and
# ActorUnavailableError are RayActorErrors).
RETRIABLE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)
CANCEL_POLL_S = 0.02


class RemoteEngine:
    def __init__(self, settings: Settings, handle: Any = None) -> None:
        if handle is None:
            address = settings.ray_address
            if address != "auto" and not listening(address):  # Ray itself would retry for minutes
                raise ConnectionError(f"no Ray cluster answers at {address}")
            connect(address)
            handle = serve.get_app_handle(settings.ray_app)
        self.handle = handle
        self.settings = settings
        self.current = settings.model  # the checkpoint every request asks its replica to serve

    # ---- the seam -------------------------------------------------------------------------------------------------
    def bind(self, mode: Mode, studio: Studio) -> ModeCalls:
        """The mode's calls for its tab: remote for the modes replicas serve, local (`studio.modes.bind`) for the
        others (Colourways, Train a style)."""
        if mode.name not in served_modes((mode,)):
            return bind(mode, studio)
        actions = {name: functools.partial(self.act, studio, mode, name) for name in mode.actions}
        run = functools.partial(self.stream, studio, mode.name, None)
        return ModeCalls(mode.name, run, actions, concurrency=self.settings.engine_concurrency)

    def act(self, studio: Studio, mode: Mode, action: str, *args: Any) -> Any:
        """An action: streamed like a run when its last argument is the job (drafts), else one call."""
        if args and isinstance(args[-1], Job):
            return self.stream(studio, mode.name, action, *args)
        names = list(inspect.signature(mode.actions[action]).parameters)[1:]  # after `studio`
        sent = tuple(as_bytes(a) if n in IMAGE_FIELDS else a for n, a in zip(names, args, strict=False))
        shipped = self._retrying(lambda: self.handle.call.remote(self.current, mode.name, action, sent).result())
        value = unpack(shipped, studio.outputs)
        if isinstance(value, Failed):
            raise value.error
        return value

    # ---- runs -----------------------------------------------------------------------------------------------------
    def stream(self, studio: Studio, mode: str, action: str | None, *args: Any) -> Result:
        """One run on a replica, its events relayed to `job` (the last argument); sent again if the replica dies."""
        *head, job = args
        job = job or Job()
        sent = tuple(inputs_as_bytes(_with_seed(a)) for a in head)
        told: list[Generated] = []  # images the job heard of: a retry makes them again, and they are not told twice
        return self._retrying(lambda: self._stream_once(studio, mode, action, sent, job, told), job)

    def _retrying(self, attempt: Callable[[], Any], job: Job | None = None) -> Any:
        for tries in range(self.settings.ray_retries + 1):
            try:
                return attempt()
            except RETRIABLE as exc:
                if job is not None and job.cancel.is_set():
                    raise Cancelled() from None
                if tries == self.settings.ray_retries:
                    raise
                log.warning("A replica failed (%s); sending the request again", type(exc).__name__)
        raise AssertionError("unreachable")

    def _stream_once(
        self, studio: Studio, mode: str, action: str | None, sent: tuple[Any, ...], job: Job, told: list[Generated]
    ) -> Result:
        response = self.handle.run.options(stream=True).remote(self.current, mode, action, sent, job.preview_every)
        finished = threading.Event()
        watcher = threading.Thread(target=_cancel_when_asked, args=(job, response, finished), daemon=True)
        watcher.start()
        again = len(told)  # images of an earlier try, made again in the same order by the same seeds
        try:
            for shipped in response:
                event = unpack(shipped, studio.outputs)
                if isinstance(event, Failed):
                    raise event.error
                if isinstance(event, Finished):
                    return event.result
                if isinstance(event, Saved):
                    if again:
                        again -= 1
                        continue
                    told.append(event.generated)
                _relay(event, job)
        except RETRIABLE:
            raise
        except Exception:
            if job.cancel.is_set():  # the stream was cancelled on our side: the run stopped at its next step
                raise Cancelled() from None
            raise
        finally:
            finished.set()
        if job.cancel.is_set():
            raise Cancelled()
        raise RuntimeError("The replica's stream ended without a result.")

    # ---- the model switcher ---------------------------------------------------------------------------------------
    def switch(self, name: str) -> None:
        """Load `name` on a replica; once it serves there, every request asks for it (each replica switches on
        its next request). A failed load raises ModelLoadError and the previous model keeps serving everywhere."""
        failed = self._retrying(lambda: self.handle.switch.remote(name).result())
        if isinstance(failed, Failed):
            raise failed.error
        self.current = name

    def status(self) -> tuple[str, bool]:
        try:
            text, watching = self.handle.status.remote().result()
        except Exception as exc:  # the switcher's line says so; the page keeps working
            return f"The Ray Serve engine does not answer ({type(exc).__name__}).", True
        return f"Ray Serve · {text}", watching


def _relay(event: Any, job: Job) -> None:
    if isinstance(event, Progress) and job.on_step is not None:
        job.on_step(event.step, event.total)
    elif isinstance(event, Preview) and job.on_preview is not None:
        job.on_preview(event.image, event.step, event.total)
    elif isinstance(event, Saved) and job.on_image is not None:
        job.on_image(event.generated)


def _cancel_when_asked(job: Job, response: Any, finished: threading.Event) -> None:
    """Cancel the stream as soon as the job's flag is set (a `threading.Event` or a flag file: polled)."""
    while not finished.wait(CANCEL_POLL_S):
        if job.cancel.is_set():
            response.cancel()
            return


def _with_seed(request: Any) -> Any:
    """The request with its random seed (-1) drawn now, so a retry after a replica's death gives the same images."""
    if dataclasses.is_dataclass(request) and not isinstance(request, type) and getattr(request, "seed", None) == -1:
        return dataclasses.replace(request, seed=resolve_seed(-1))
    return request
