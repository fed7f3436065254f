"""A stand-in for the `spaces` package on a ZeroGPU Space, for tests, without a GPU.

`FakeSpaces().GPU(duration=…)` keeps the contract `spaces.GPU` has there (spaces/zero/wrappers.py): the marked
function runs in a *forked* process; its arguments are pickled on the way in and its results (each yielded item,
for a generator) on the way out; an exception comes back to the caller; Gradio's progress updates and toasts are
relayed to the parent's queue; and whatever the function changes in its own process is lost. Each call is recorded
in the parent as a `Call` (function name, child pid, and what `probe` — run in the child after the call — saw).
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from gradio.context import LocalContext
from gradio.queueing import Queue

RELAYED = ("set_progress", "log_message")  # the Queue methods spaces relays from the worker


@dataclass
class Call:
    name: str
    pid: int
    probe: Any


class FakeSpaces:
    def __init__(self, probe: Callable[[], Any] = lambda: None) -> None:
        self.calls: list[Call] = []
        self.durations: list[Any] = []
        self.probe = probe

    def GPU(self, task: Callable | None = None, *, duration: Any = None) -> Any:  # noqa: N802 (spaces' name)
        self.durations.append(duration)

        def decorate(fn: Callable) -> Callable:
            marked = self._generator(fn) if inspect.isgeneratorfunction(fn) else self._regular(fn)
            marked.zerogpu = None  # as spaces marks its sections
            return marked

        return decorate(task) if callable(task) else decorate

    def _regular(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            results = [value for kind, value in self._run(fn, args, kwargs, generator=False) if kind == "ok"]
            assert len(results) == 1, "the worker ended without a result"
            return results[0]

        return call

    def _generator(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Iterator[Any]:
            for kind, value in self._run(fn, args, kwargs, generator=True):
                if kind == "item":
                    yield value

        return call

    def _run(self, fn: Callable, args: tuple, kwargs: dict, generator: bool) -> Iterator[tuple[str, Any]]:
        payload = pickle.dumps((args, kwargs))  # an unpicklable argument fails here, as it does on ZeroGPU
        context = multiprocessing.get_context("fork")
        reader, writer = context.Pipe(duplex=False)
        worker = context.Process(target=_worker, args=(fn, payload, writer, generator, self.probe), daemon=True)
        worker.start()
        writer.close()
        try:
            while True:
                try:
                    kind, *rest = pickle.loads(reader.recv_bytes())
                except EOFError:
                    raise RuntimeError("ZeroGPU worker error: the worker died") from None
                if kind == "rpc":
                    name, rpc_args, rpc_kwargs = rest
                    blocks = LocalContext.blocks.get(None)
                    if blocks is not None and blocks._queue is not None:
                        getattr(blocks._queue, name)(*rpc_args, **rpc_kwargs)
                elif kind == "error":
                    raise rest[0]
                elif kind == "done":
                    self.calls.append(Call(fn.__name__, rest[0], rest[1]))
                    return
                else:
                    yield kind, rest[0]
        finally:
            reader.close()
            worker.join(timeout=60)


def _worker(fn: Callable, payload: bytes, writer: Any, generator: bool, probe: Callable[[], Any]) -> None:
    def send(*message: Any) -> None:
        writer.send_bytes(pickle.dumps(message))

    torch.set_num_threads(1)  # an OpenMP pool inherited through fork is not usable
    for name in RELAYED:
        setattr(Queue, name, lambda _queue, *a, _name=name, **k: send("rpc", _name, a, k))
    try:
        args, kwargs = pickle.loads(payload)
        if generator:
            for item in fn(*args, **kwargs):
                send("item", item)
        else:
            send("ok", fn(*args, **kwargs))
        send("done", os.getpid(), probe())
    except BaseException as exc:  # noqa: BLE001 (everything goes back to the caller, as spaces does)
        send("error", exc)
    finally:
        writer.close()
        os._exit(0)
