"""The errors the studio raises for people: one family the UI (and any other front) turns into words.

Everything a designer or an API caller can fix is a `StudioError`; its message says what happened and what to do.
Fronts catch `StudioError` alone (Gradio shows it as `gr.Error`), never a module's own exception types, so the UI
imports nothing from the model cache. `Cancelled` is not an error: a run stopped because someone asked it to.
"""

from __future__ import annotations


class StudioError(Exception):
    """Something the person can fix; the message is written for them."""


class RequestError(StudioError, ValueError):
    """A request field that cannot be used (out of range, missing, contradicting another)."""


class ModelLoadError(StudioError, RuntimeError):
    """A model could not be loaded. The message names the model, the reason and the fix."""


class RestoreError(StudioError, ValueError):
    """A file whose parameters cannot be restored; the message says why and what to do."""


class Cancelled(Exception):
    """Raised inside the step callback when the run's cancel flag is set."""
