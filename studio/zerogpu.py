"""GPU sections for Hugging Face ZeroGPU Spaces, and what the studio does to honour their contract.

On a ZeroGPU Space a function marked with `spaces.GPU` runs in a *forked worker* that holds a GPU for the call:
its arguments and results are pickled across the process boundary, and whatever it changes in its process (a
model loaded, a cache filled, a flag set) is lost with the worker. Off ZeroGPU `spaces.GPU` returns the function
itself. The studio meets that contract like this:

- Every GPU event of the UI goes through one marker, `UIContext.gpu` (set from `gpu_section`), applied where the
  event is wired. The marked functions are the tab handlers: their arguments are form values, `gr.Request` and
  `gr.Progress` (all picklable; `spaces` relays progress and toasts back to the page), and they return file paths
  and text. The engine, the cache and the closures stay in memory, inherited by the fork.
- `preload_everything` loads every model any mode uses (the base, each mode's `companions` — ControlNet, HED
  annotator, inpainting UNet, LCM-LoRA —, the operator's LoRAs and embeddings, and TAESD) in the main process
  before serving, on `cuda`, which `spaces` records there and moves into each worker. So no GPU section ever loads
  weights (which would be lost, and paid again on every call).
- Settings turn batching of concurrent txt2img requests off (each call is its own process: there is nothing to
  merge), and cancel crosses the process boundary through `studio.jobs.JobBoard` flag files.

`spaces` is optional: when it is not installed, `gpu_section` returns the identity.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from studio.settings import Settings

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def identity(fn: F) -> F:
    return fn


def spaces_module() -> Any | None:
    """The `spaces` package when it is installed (it must be imported before CUDA is touched), else None."""
    try:
        return importlib.import_module("spaces")
    except ImportError:
        return None


def gpu_section(settings: Settings, spaces: Any | None = None) -> Callable[[F], F]:
    """The marker for functions that need the GPU: `spaces.GPU(duration=…)` when `spaces` is installed (a no-op
    except on ZeroGPU), the identity otherwise. `spaces` is looked up when not given."""
    spaces = spaces if spaces is not None else spaces_module()
    if spaces is None:
        return identity
    return spaces.GPU(duration=settings.zero_gpu_duration)


def preload_everything(studio: Any, companions: Iterable[str]) -> list[str]:
    """Load, in this process, the base and every companion the modes use (`Mode.companions`), and TAESD when at
    hand, so forked GPU workers inherit them all; returns what is resident. A companion that fails to load is
    reported and left to fail its mode in words, as elsewhere."""
    cache = studio.cache
    cache.base()
    for name in dict.fromkeys(companions):
        try:
            cache.companion(name)
        except Exception as exc:  # the base still serves the modes that need no companion
            log.error("ZeroGPU preload: %s", exc)
    try:  # the operator's LoRAs and embeddings, into the style copies of the base and the draft/inpaint UNets
        log.info("ZeroGPU preload: styles %s", ", ".join(cache.preload_styles()) or "(none)")
    except Exception as exc:  # a broken style file fails its own requests, in words
        log.error("ZeroGPU preload of styles: %s", exc)
    cache.preview_decoder()  # TAESD when at hand (None otherwise: previews then need no weights)
    return [row.name for row in cache.resident()]
