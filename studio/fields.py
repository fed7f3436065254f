"""The vocabulary of mode declarations: value checks for the fields presets and PNG restore may set, and readers
that turn an infotext value back into request fields.

A `Check` returns what is wrong with a value (or None). A `Reader` takes one infotext value (and every key of the
infotext, for values that depend on others) and returns request fields; it raises `ValueError` for an unreadable
value and `Unsupported` for a readable one the studio has no equivalent for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

from studio.engine.checks import MAX_GUIDANCE, MAX_SEED
from studio.metadata import parse_size
from studio.schedulers import SAMPLERS
from studio.settings import Limits

Check = Callable[[Any], str | None]  # returns what is wrong with a value, or None
Reader = Callable[[str, Mapping[str, str]], dict[str, Any]]


class Unsupported(ValueError):
    """A readable value this studio has no equivalent for (e.g. a sampler it does not offer)."""


# ---- value checks -------------------------------------------------------------------------------------------------
def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        if not is_number(value):
            return f"must be a number; got {value!r}"
        return None if low <= value <= high else f"must be between {low:g} and {high:g}; got {value:g}"

    return check


def integer(low: int, high: int, multiple: int = 1) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"must be a whole number; got {value!r}"
        if not low <= value <= high:
            return f"must be between {low} and {high}; got {value}"
        return None if value % multiple == 0 else f"must be a multiple of {multiple}; got {value}"

    return check


def choice(options: tuple[Any, ...]) -> Check:
    def check(value: Any) -> str | None:
        return None if value in options else f"must be one of {', '.join(map(repr, options))}; got {value!r}"

    return check


def text(max_chars: int) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be a string; got {value!r}"
        return None if len(value) <= max_chars else f"is {len(value)} characters long; at most {max_chars}"

    return check


def flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false; got {value!r}"


def optional(inner: Check) -> Check:
    def check(value: Any) -> str | None:
        return None if value is None else inner(value)

    return check


def size(limits: Limits) -> Check:
    """An output side: a multiple of 8 within the studio's limit, or None for the model's native size."""
    return optional(integer(64, limits.max_side, multiple=8))


STRENGTH = number(0.01, 1)


def prompt_fields(limits: Limits) -> dict[str, Check]:
    return {"prompt": text(limits.max_prompt_chars), "negative_prompt": text(limits.max_prompt_chars)}


def sampling_fields(limits: Limits, *, batch_count: bool = True) -> dict[str, Check]:
    """The fields every diffusion mode shares (diffusers names), with the engine's own ranges."""
    fields: dict[str, Check] = {
        **prompt_fields(limits),
        "num_inference_steps": integer(1, limits.max_steps),
        "guidance_scale": number(0, MAX_GUIDANCE),
        "scheduler": choice(tuple(SAMPLERS)),
        "seed": integer(-1, MAX_SEED),
        "batch_size": integer(1, limits.max_batch_size),
    }
    if batch_count:
        fields["batch_count"] = integer(1, limits.max_batch_count)
    return fields


# ---- infotext readers -----------------------------------------------------------------------------------------------
def boolean(value: str) -> bool:
    if value.strip().lower() not in ("true", "false"):
        raise ValueError(f"not true/false: {value!r}")
    return value.strip().lower() == "true"


def one(name: str, read: Callable[[str], Any]) -> Reader:
    """A reader for an infotext key that holds one request field."""
    return lambda value, _params: {name: read(value.strip())}


def reverse(table: Mapping[str, str], name: str) -> Reader:
    """A reader for a value written from `table` (request value -> infotext label)."""
    lookup = {label.lower(): key for key, label in table.items()}

    def read(value: str, _params: Mapping[str, str]) -> dict[str, Any]:
        if value.strip().lower() not in lookup:
            raise Unsupported(f"{value.strip()!r} is not offered here")
        return {name: lookup[value.strip().lower()]}

    return read


def read_size(value: str, _params: Mapping[str, str]) -> dict[str, Any]:
    width, height = parse_size(value.strip())
    return {"width": width, "height": height}
