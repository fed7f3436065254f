"""One Engine replica: a whole `Studio` (model cache, every companion loaded up front, the txt2img batcher) serving
the modes that run on the GPU, as streams of the typed contract's events.

A plain class: `studio.serve.deployment` makes it a Ray Serve deployment, and a test can build it without Ray.
A run works on a thread of the replica's pool while `run` (an async generator: Serve streams what it yields) hands
on its events; a cancel from the caller (`CancelledError` in the generator, or its closing) sets the run's cancel
flag and waits for the engine to stop at its next denoising step. Results are written into a private scratch
folder and shipped as bytes (`studio.serve.wire`); the replica never writes the served outputs folder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from studio.cache import ModelCache
from studio.engine.contract import Finished, Job, Preview, Progress, Saved, Studio
from studio.engine.models import model_status, switch_model
from studio.errors import Cancelled, StudioError
from studio.modes import BUILTIN, Mode, bind
from studio.outputs import Outputs
from studio.serve.wire import Failed, Packer, Shipped
from studio.settings import Settings
from studio.zerogpu import preload_everything

log = logging.getLogger(__name__)


def served_modes(modes: tuple[Mode, ...] = BUILTIN) -> dict[str, Mode]:
    """The modes a replica serves: those whose own endpoint runs on the GPU. Colourways (CPU work) and Train a style
    (it writes the front's LoRA folder) stay in the front's process."""
    return {mode.name: mode for mode in modes if mode.gpu}


class EngineReplica:
    def __init__(self, settings: Settings, threads: int = 0) -> None:
        if threads:
            torch.set_num_threads(threads)  # replicas sharing a CPU node each take their share of its cores
        self.scratch = Path(tempfile.mkdtemp(prefix="atelier-replica-"))
        self.settings = dataclasses.replace(settings, engine="local", outputs=self.scratch, preload=False)
        # the scratch copy is read back at once and shipped; the front's copy is the durable one (fsynced)
        self.studio = Studio(cache=ModelCache(self.settings), outputs=Outputs(self.scratch, durable=False))
        self.modes = served_modes()
        self.calls = {name: bind(mode, self.studio) for name, mode in self.modes.items()}
        companions = [name for mode in self.modes.values() for name in mode.companions]
        log.info("Replica %d: resident %s", os.getpid(), ", ".join(preload_everything(self.studio, companions)))
        self.pool = ThreadPoolExecutor(max_workers=settings.max_ongoing + 2, thread_name_prefix="atelier-replica")
        self.switching = threading.Lock()
        self.steps_done = 0  # denoising steps finished by this replica's runs (`activity`)
        self.counting = threading.Lock()

    # ---- the runs -------------------------------------------------------------------------------------------------
    async def run(
        self, model: str, mode: str, action: str | None, args: tuple[Any, ...], preview_every: int = 0
    ) -> AsyncIterator[Shipped]:
        """`mode`'s run (or its action `action`) on `args` followed by a job, as shipped events ending with
        `Finished` or `Failed`."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Any] = asyncio.Queue()

        def put(event: Any) -> None:
            loop.call_soon_threadsafe(inbox.put_nowait, event)

        job = Job(preview_every=preview_every)

        def on_step(step: int, total: int) -> None:
            with self.counting:
                self.steps_done += 1
            put(Progress(step, total))

        job.on_step = on_step
        job.on_preview = lambda image, step, total: put(Preview(image, step, total))
        job.on_image = lambda generated: put(Saved(generated))
        work = loop.run_in_executor(self.pool, self._work, model, mode, action, args, job, put)
        packer = Packer(self.scratch)
        try:
            while True:
                event = await inbox.get()
                yield packer.ship(event)
                if isinstance(event, Finished | Failed):
                    return
        finally:
            job.cancel.set()  # a no-op once the run finished; else it stops at its next denoising step
            await asyncio.shield(work)
            packer.clean()

    def _work(self, model: str, mode: str, action: str | None, args: tuple[Any, ...], job: Job, put: Any) -> None:
        try:
            self.use(model)
            calls = self.calls[mode]
            call = calls.run if action is None else calls.actions[action]
            put(Finished(call(*args, job)))
        except (StudioError, Cancelled, torch.OutOfMemoryError) as exc:
            put(Failed(exc))
        except Exception as exc:
            log.exception("%s failed in a replica", action or mode)
            put(Failed(exc))

    async def call(self, model: str, mode: str, action: str, args: tuple[Any, ...]) -> Shipped:
        """One of `mode`'s actions that is no run (Restyle's edge preview, the upscaler list): its value, shipped."""
        loop = asyncio.get_running_loop()

        def work() -> Any:
            self.use(model)
            try:
                return self.calls[mode].actions[action](*args)
            except (StudioError, torch.OutOfMemoryError) as exc:
                return Failed(exc)

        packer = Packer(self.scratch)
        try:
            return packer.ship(await loop.run_in_executor(self.pool, work))
        finally:
            packer.clean()

    # ---- the model ------------------------------------------------------------------------------------------------
    def use(self, model: str) -> None:
        """Serve `model` (a request carries the front's current model): switched on first use after a change; a
        failed load raises ModelLoadError with the previous model still serving."""
        if model and self.studio.cache.current != model:
            with self.switching:
                if self.studio.cache.current != model:
                    log.info("Replica %d: switching to %s", os.getpid(), model)
                    switch_model(self.studio, model)
                    for name in dict.fromkeys(c for m in self.modes.values() for c in m.companions):
                        self.studio.cache.companion(name)

    async def switch(self, model: str) -> Failed | None:
        """Load `model` here now (the front's switcher); a failure comes back as `Failed` in words."""
        try:
            await asyncio.get_running_loop().run_in_executor(self.pool, self.use, model)
        except StudioError as exc:
            return Failed(exc)
        return None

    def status(self) -> tuple[str, bool]:
        return model_status(self.studio)

    def activity(self) -> tuple[int, int]:
        """(this replica's process id, the denoising steps it has finished): for operators, and for the tests that
        kill a replica or watch a cancelled run stop."""
        return os.getpid(), self.steps_done

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "scratch", ""), ignore_errors=True)
