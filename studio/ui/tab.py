"""What a tab receives and what it hands back: the contract between one mode's form and the studio around it.

A tab builder is `create(ctx, calls) -> Tab`. `calls` holds the mode's engine callables, already bound to the
studio (a tab never imports the model). The returned `Tab` names its components by the handler's parameter names
(diffusers' names), so the shell fills forms, wires Send to and restores PNGs by name; and each event's `inputs`
are computed from the handler's signature (`inputs_for`), so no list can be out of order.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

if TYPE_CHECKING:
    from studio.ui.widgets import UIContext

Component = gr.components.Component
NON_API = ("request", "progress")  # parameters Gradio injects, not form fields


@dataclass(frozen=True)
class ModeCalls:
    """A mode's engine, bound to the studio: `run(request, job) -> Result` and its further actions by name."""

    name: str  # the mode's name: its tab id and API endpoint
    run: Callable[..., Any]
    actions: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    concurrency: int = 1  # how many calls of `run` may wait at once (a batcher merges them)


@dataclass(frozen=True)
class Tab:
    """One built tab: its API handler, its form components by field name, and where its results appear."""

    handler: Callable[..., Any]  # the API endpoint's function: named parameters, no *args
    fields: dict[str, Component]  # handler parameter name -> input component
    gallery: gr.Gallery
    prompt: gr.Textbox | None = None
    input_image: Component | None = None  # where "Send to" and examples put an image
    extras: dict[str, Any] = field(default_factory=dict)  # what a mode's own wiring needs later (Refine's tree)

    @property
    def inputs(self) -> list[Component]:
        return inputs_for(self.handler, self.fields)


TabBuilder = Callable[["UIContext", ModeCalls], Tab]


def parameter_names(handler: Callable[..., Any]) -> list[str]:
    """The handler's form parameters, in order (Gradio's injected `request` and `progress` left out)."""
    params = inspect.signature(handler).parameters.values()
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise TypeError(f"{handler.__name__} must take named parameters only (no *args/**kwargs)")
    return [p.name for p in params if p.name not in NON_API]


def inputs_for(handler: Callable[..., Any], fields: Mapping[str, Component]) -> list[Component]:
    """The event's inputs for `handler`, taken by its parameter names: the order cannot be wrong."""
    names = parameter_names(handler)
    missing = [name for name in names if name not in fields]
    if missing:
        raise KeyError(f"{handler.__name__} takes {', '.join(missing)}, which the form has no component for")
    for name in names:
        name_its_errors(fields[name], name)
    return [fields[name] for name in names]


_NAMED = "_atelier_named_errors"


def name_its_errors(component: Component, name: str) -> None:
    """Errors of the component's own preprocessing name the field: Gradio's "Value 1000 is greater than maximum
    value 8" becomes "Batch size (batch_size): Value 1000 ...", and a NaN or infinite number sent as raw JSON is
    refused in words instead of failing inside Gradio. Set once per component, on the instance (like the upload
    inputs of studio/ui/uploads.py)."""
    if getattr(component, _NAMED, False):
        return
    original = component.preprocess
    label = getattr(component, "label", None)
    field = f"{label} ({name})" if label and label != name else name

    def preprocess(payload: Any) -> Any:
        if isinstance(payload, float) and not math.isfinite(payload):
            raise gr.Error(f"{field} must be a finite number; got {payload}.")
        try:
            return original(payload)
        except gr.Error as exc:
            raise gr.Error(f"{field}: {exc.message}") from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise gr.Error(f"{field}: this value cannot be used ({exc}).") from None

    component.preprocess = preprocess  # type: ignore[method-assign]
    setattr(component, _NAMED, True)
