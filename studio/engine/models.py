"""Which model serves: switching checkpoints (the previous one keeps serving when a load fails) and the status line
that follows loads as they happen. The UI's model switcher receives these as callables."""

from __future__ import annotations

from collections.abc import Callable

from studio.engine.contract import Studio


def switch_model(studio: Studio, name: str, after: Callable[[], object] | None = None) -> None:
    """Make `name` the current checkpoint; `after` runs once it is resident (ZeroGPU preloads its companions).
    Raises ModelLoadError, with the previous model still current and resident."""
    studio.cache.switch(name)
    if after is not None:
        after()


def model_status(studio: Studio) -> tuple[str, bool]:
    """The switcher's status text, and whether to keep watching (a load under way, or nothing resident yet).

    `loading` is read before `resident()`: a load holds the cache lock, and `resident()` would wait for the whole
    load to finish before the line could say that it is loading."""
    loading = studio.cache.loading
    if loading:
        return f"Loading {loading}…", True
    rows = studio.cache.resident()
    if not rows:
        return f"Model **{studio.cache.current}** loads on first use.", True
    parts = [f"{r.name} ({r.param_bytes / 2**20:,.0f} MiB)" for r in rows]
    return f"Current: **{studio.cache.current}** · resident: {', '.join(parts)}", False
