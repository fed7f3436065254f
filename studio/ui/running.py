"""How a tab runs the engine: one session's job, per-step progress, Cancel, errors in words, outputs streamed.

Every handler that runs the engine is a generator over `run_events`: the engine works on a thread of its own
(`studio.engine.contract.events`) while the handler yields at every denoising step. Those yields are what let
Gradio stop a run: when a client cancels (`job.cancel()` in gradio_client, the Cancel of another front) or its
connection goes, Gradio closes the generator at its next yield, which sets the run's cancel flag and waits for the
engine to stop at its next step, so the GPU is free for the next request at once. A handler that returned only at
the end could not be stopped that way: Gradio frees its slot while its thread runs on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import gradio as gr
import torch

from studio.engine.contract import Cancelled, Event, Finished, Generated, Job, Preview, Progress, Result, Saved, events
from studio.errors import StudioError
from studio.jobs import JobBoard

log = logging.getLogger(__name__)

Outputs = tuple[list[str], int, str]  # gallery paths, seed used, infotext of the first image


class StepProgress:
    """Gradio's progress bar for one run: "12/25 steps" and, once two steps have been timed, the time left
    ("Denoising · about 8 s left"), shown once (on the tab's results, see `show_progress_on` in the tabs)."""

    def __init__(self, progress: gr.Progress, desc: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.progress, self.desc, self.clock = progress, desc, clock
        self.first: tuple[int, float] | None = None  # (step, time) of the first step reported

    def __call__(self, step: int, total: int) -> None:
        now = self.clock()
        if self.first is None or step < self.first[0]:  # a new pass (batch count, Refine's next loop) restarts
            self.first = (step, now)
        self.progress((step, total), desc=f"{self.desc}{eta(self.first, step, total, now)}", unit="steps")


def eta(first: tuple[int, float], step: int, total: int, now: float) -> str:
    """ " · about N s left" from the pace since the first step reported, or "" while there is no pace yet."""
    done = step - first[0]
    if done < 2 or step >= total:
        return ""
    left = (now - first[1]) / done * (total - step)
    return f" · about {left:.0f} s left" if left < 90 else f" · about {left / 60:.0f} min left"


@contextlib.contextmanager
def guarded_job(
    board: JobBoard,
    request: gr.Request | None,
    progress: gr.Progress,
    *,
    desc: str = "Denoising",
    what: str = "Generation",
    kept: Callable[[], int] = lambda: 0,
    where: str = "",
) -> Iterator[Job]:
    """The session's job for one run, with per-step progress and Cancel; failures become words for the designer.

    A cancel ends the block quietly (with a toast saying how many finished images, `kept()`, were kept `where`);
    anything else becomes a `gr.Error`. Images saved before either are already on disk."""
    session = getattr(request, "session_hash", None) or "anonymous"
    job = board.start(session)
    job.on_step = StepProgress(progress, desc)
    try:
        yield job
    except Cancelled:
        gr.Warning(f"Cancelled. {kept()} finished image(s) were kept{where}.")
    except StudioError as exc:
        raise gr.Error(str(exc)) from None
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise gr.Error("The GPU ran out of memory. Try a smaller size or batch; the studio is still running.") from None
    except Exception:
        log.exception("%s failed", what)
        raise gr.Error(
            f"{what} failed unexpectedly (details in the server log). Finished images are kept{where}; "
            "try again, or with other settings."
        ) from None
    finally:
        board.finish(session, job)


def run_events(
    board: JobBoard,
    request: gr.Request | None,
    progress: gr.Progress,
    run: Callable[[Job], Result],
    *,
    preview_every: int = 0,
    desc: str = "Denoising",
    what: str = "Generation",
    where: str = "",
) -> Iterator[Event]:
    """One guarded run (`guarded_job`) as the engine's events; progress goes to Gradio's bar on the way. After a
    cancel the stream ends without `Finished`; what was saved before it came as `Saved` events."""
    saved: list[Generated] = []
    with guarded_job(board, request, progress, desc=desc, what=what, kept=lambda: len(saved), where=where) as job:
        job.preview_every = preview_every
        report = StepProgress(progress, desc)
        for event in events(run, job):
            if isinstance(event, Progress):
                report(event.step, event.total)
            elif isinstance(event, Saved):
                saved.append(event.generated)
            yield event


def gallery_outputs(stream: Iterator[Event], *, preview: bool = False) -> Iterator[tuple[Any, ...]]:
    """A tab's (gallery, seed used, infotext) from a run's events: nothing changes while it runs (one yield per
    event, so Gradio can stop it), the results at the end. A run cancelled before its first image changes nothing:
    the results shown before stay. With `preview`, a fourth output shows the live preview and hides it at the end."""
    produced: list[Generated] = []
    result: Result | None = None
    hold = (gr.skip(),) * 3
    for event in stream:
        if isinstance(event, Saved):
            produced.append(event.generated)
        elif isinstance(event, Finished):
            result = event.result
        if preview:
            shown = gr.update(value=event.image, visible=True) if isinstance(event, Preview) else gr.skip()
            yield (*hold, shown)
        else:
            yield hold
    final = results_of(result, produced)
    hide = (gr.update(value=None, visible=False),) if preview else ()
    yield (*(final or hold), *hide)


def results_of(result: Result | None, produced: list[Generated]) -> Outputs | None:
    """The outputs for a finished run, or for the images saved before a cancel; None when there is nothing."""
    images = result.images if result is not None else produced
    if not images:
        return None
    seed = result.seed if result is not None else images[0].seed
    return [str(g.path) for g in images], seed, images[0].infotext


def finished(stream: Iterator[Event], on_tick: Callable[[], Any]) -> Generator[Any, None, Result | None]:
    """Yield `on_tick()` for every event of a run and return its `Result` (None when it was cancelled): for a
    handler that builds its own outputs from the result (Textile's exports, the drafts' choices)."""
    result: Result | None = None
    for event in stream:
        if isinstance(event, Finished):
            result = event.result
        yield on_tick()
    return result


def cancel_button(board: JobBoard) -> gr.Button:
    """Cancel for the session's run. On the page it shows only while its tab runs something (`RUNNING_JS`)."""
    button = gr.Button("Cancel", variant="stop", size="sm", elem_classes="cancel-action")

    def cancel(request: gr.Request) -> None:
        if board.cancel(request.session_hash or "anonymous"):
            gr.Info("Stopping after the current step…")
        else:
            gr.Info("Nothing is running in this tab's session to cancel.")

    # Queued (its toast reaches the page only through the queue) but never waiting: no concurrency limit.
    button.click(cancel, concurrency_limit=None, api_visibility="private")
    return button


# A tab "runs" from a click on its main button (`primary-action`, which Ctrl+Enter also presses; `starts-run` for
# other buttons that start a run, like Draft) or Shift+Enter in one of its text boxes, until none of its components
# shows Gradio's loading status any more. The class `atelier-running` on the tab shows its Cancel (app.CSS). While
# it runs, only one loading overlay writes the progress (the first in the results column): the others are marked
# `data-quiet` and app.CSS hides their text (a tab whose event sets `show_progress_on` has only one anyway).
RUNNING_JS = """() => {
  const RUNNING = "atelier-running";
  const shown = (tab) => Array.from(tab.querySelectorAll("[data-testid='status-tracker']"))
    .filter((tracker) => !tracker.classList.contains("hide"));
  const quiet = (tab) => {
    const trackers = shown(tab);
    const speaker = trackers.find((t) => t.closest(".results-column")) || trackers[0];
    for (const tracker of tab.querySelectorAll("[data-testid='status-tracker']")) {
      if (tracker === speaker) delete tracker.dataset.quiet; else tracker.dataset.quiet = "1";
    }
  };
  let timer = null;
  const watch = () => {
    if (timer) return;
    timer = setInterval(() => {
      for (const tab of document.querySelectorAll("." + RUNNING)) {
        quiet(tab);
        if (Date.now() - Number(tab.dataset.runStart) > 1000 && !shown(tab).length) tab.classList.remove(RUNNING);
      }
      if (!document.querySelector("." + RUNNING)) { clearInterval(timer); timer = null; }
    }, 250);
  };
  const start = (element) => {
    const tab = element && element.closest("[role='tabpanel'][id^='tab-']");
    if (!tab) return;
    tab.dataset.runStart = String(Date.now());
    tab.classList.add(RUNNING);
    watch();
  };
  document.addEventListener("click", (event) => {
    const button = event.target instanceof Element && event.target.closest("button.primary-action, button.starts-run");
    if (button) start(button);
  }, true);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && event.shiftKey && event.target instanceof HTMLTextAreaElement) start(event.target);
  }, true);
}"""
