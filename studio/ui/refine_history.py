"""Refine's history as a visible tree: every node a thumbnail with "#n ← #parent", its loop and strength, drawn
under its parent; one selection (the Node picker) that the tree's highlight, Continue, Compare, Restore and
Download branch all follow.

The tree is a `gr.HTML` rendered on the server from `studio.history` (escaped text, image links into the outputs
folder only); a click on a node sends its id back (`trigger("click", {node})`), which sets the picker. Compare
and the branch download stay hidden until they have something to show; once Compare is open it follows the
selection (a new selection, or the newest node after a run, is compared with its own parent).
"""

from __future__ import annotations

import html
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gradio as gr

from studio.errors import RestoreError
from studio.history import History, HistoryError
from studio.restore import Restored

Restore = Callable[[str | Path], Restored]
# The form fields a restored PNG fills, in this order (request field names; see studio.restore).
RESTORED = (
    "prompt",
    "negative_prompt",
    "strength",
    "num_inference_steps",
    "guidance_scale",
    "scheduler",
    "seed",
    "color_correction",
    "seed_policy",
    "loops",
    "strength_schedule",
)
EMPTY = (
    '<p class="refine-tree-empty">No history yet: each Refine result appears here, under the image it grew from.</p>'
)
# A click on a node (or Enter on it) selects it; the rest of the tree's markup is the server's. Once mounted (the
# Refine tab opens), the tree asks for its current drawing: an update that came while it mounted (the browser's
# copy of the tree, adopted right after a reload) was otherwise lost.
TREE_JS = """
element.addEventListener("click", (event) => {
  const node = event.target instanceof Element && event.target.closest("[data-node]");
  if (node) trigger("click", {node: Number(node.dataset.node)});
});
trigger("load");
"""
TREE_CSS = """
.refine-tree {max-height: 420px; overflow: auto; padding: 2px}
.refine-tree ul {list-style: none; margin: 0; padding-left: 14px; border-left: 1px dashed var(--border-color-primary)}
.refine-tree > ul {padding-left: 0; border-left: none}
.refine-tree li {margin: 4px 0}
.refine-tree button {display: flex; gap: 8px; align-items: center; width: max-content; max-width: 100%;
  padding: 3px 8px 3px 3px; border: 2px solid transparent; border-radius: var(--radius-md);
  background: var(--background-fill-secondary); color: var(--body-text-color); text-align: left; cursor: pointer}
.refine-tree button.selected {border-color: var(--color-accent); background: var(--color-accent-soft)}
.refine-tree img {width: 56px; height: 56px; object-fit: contain; flex: none;
  background: var(--background-fill-primary)}
.refine-tree .who {font-weight: 600; white-space: nowrap}
.refine-tree .how {font-size: 0.85em; opacity: 0.8; white-space: nowrap}
.refine-tree-empty {opacity: 0.7; margin: 0.25em 0}
"""


@dataclass
class HistoryPanel:
    tree_view: gr.HTML
    node_pick: gr.Dropdown
    continue_button: gr.Button
    compare_button: gr.Button
    restore_button: gr.Button
    download_button: gr.Button
    compare: gr.ImageSlider
    branch_zip: gr.File
    api_nodes: gr.Gallery  # the /refine_history endpoint's node gallery (never shown: the tree shows the nodes)
    comparing: gr.State  # Compare is open: it follows the selection


def panel() -> HistoryPanel:
    with gr.Accordion("History", open=True):
        tree_view = gr.HTML(EMPTY, js_on_load=TREE_JS, css_template=TREE_CSS, elem_id="refine-tree")
        node_pick = gr.Dropdown(label="Node", choices=[], value=None, interactive=True)
        with gr.Row():
            continue_button = gr.Button("Continue from node", size="sm")
            compare_button = gr.Button("Compare with parent", size="sm")
            restore_button = gr.Button("Restore recipe (replay)", size="sm")
            download_button = gr.Button("Download branch", size="sm")
        compare = gr.ImageSlider(
            label="Parent ↔ node", type="filepath", format="png", max_height=420, visible=False,
            elem_id="refine-compare",
        )  # fmt: skip
        branch_zip = gr.File(label="Branch (zip of PNGs + tree.json)", interactive=False, visible=False)
    api_nodes = gr.Gallery(label="All nodes", format="png", type="filepath", visible=False)
    return HistoryPanel(tree_view, node_pick, continue_button, compare_button, restore_button, download_button,
                        compare, branch_zip, api_nodes, gr.State(False))  # fmt: skip


# ---- drawing ------------------------------------------------------------------------------------------------------
def tree_html(history: History, selected: int | None) -> str:
    """The tree as nested lists in depth-first order: each node under its parent, its thumbnail, `#n ← #parent`,
    loop, strength and seed; the selected node highlighted."""
    rows = history.ordered()
    if not rows:
        return EMPTY
    parts, depth = ['<div class="refine-tree" role="tree" aria-label="Refine history">'], -1
    for node_id, level in rows:
        if level > depth:
            parts.append("<ul>" * (level - depth))
        else:
            parts.append("</li>" + "</ul></li>" * (depth - level))
        depth = level
        parts.append(f"<li>{node_button(history, node_id, node_id == selected)}")
    parts.append("</li>" + "</ul></li>" * depth + "</ul></div>")
    return "".join(parts)


def node_button(history: History, node_id: int, selected: bool) -> str:
    node = history.nodes[node_id]
    who = f"#{node.id} source" if node.parent is None else f"#{node.id} ← #{node.parent}"
    how = [] if node.parent is None else [f"loop {node.loop}"]
    if node.strength is not None:
        how.append(f"strength {node.strength:g}")
    if node.seed is not None:
        how.append(f"seed {node.seed}")
    try:
        src = "gradio_api/file=" + quote(str(history.path(node_id)))
    except HistoryError:
        src = ""
    state = " selected" if selected else ""
    return (
        f'<button type="button" role="treeitem" class="node{state}" data-node="{node.id}" '
        f'aria-selected="{str(selected).lower()}" aria-label="{html.escape(who)}">'
        f'<img src="{html.escape(src)}" alt="" loading="lazy">'
        f'<span><span class="who">{html.escape(who)}</span><br><span class="how">{html.escape(" · ".join(how))}</span>'
        "</span></button>"
    )


def show_tree(history: History) -> tuple[Any, list[tuple[str, str]]]:
    """The node picker (the newest node selected) and every node with its caption (the /refine_history API)."""
    latest = max(history.nodes, default=None)
    items = [(str(history.path(i)), history.nodes[i].label()) for i, _ in history.ordered()]
    return gr.Dropdown(choices=history.choices(), value=latest), items


# ---- wiring -------------------------------------------------------------------------------------------------------
def wire(
    ui: HistoryPanel,
    tree: gr.State,
    root: Path,
    restore: Restore | None,
    form: list[Any],
    input_image: gr.components.Component,
    continue_from: gr.State,
) -> None:
    """The tree follows the history and the selection; every action acts on the one selected node."""
    private: dict[str, Any] = {"api_visibility": "private", "queue": True, "concurrency_limit": None}
    instant: dict[str, Any] = {"api_visibility": "private", "queue": False}

    def grown(t: dict[str, Any]) -> tuple[Any, str]:
        """After a run (or a page reload): the newest node is the selection, and the tree shows it."""
        history = History.from_dict(t, root)
        latest = max(history.nodes, default=None)
        return gr.Dropdown(choices=history.choices(), value=latest), tree_html(history, latest)

    def selected(node_id: Any, t: dict[str, Any], comparing: bool) -> tuple[str, Any]:
        history = History.from_dict(t, root)
        node = node_id if isinstance(node_id, int) and node_id in history.nodes else None
        return tree_html(history, node), (following_compare(history, node) if comparing else gr.skip())

    def clicked(t: dict[str, Any], evt: gr.EventData) -> Any:
        node = getattr(evt, "_data", None) or {}
        history = History.from_dict(t, root)
        return node["node"] if isinstance(node.get("node"), int) and node["node"] in history.nodes else gr.skip()

    tree.change(grown, inputs=tree, outputs=[ui.node_pick, ui.tree_view], **instant)
    gr.on([], lambda t: show_tree(History.from_dict(t, root)), inputs=tree, outputs=[ui.node_pick, ui.api_nodes],
          api_name="refine_history", queue=False)  # fmt: skip
    ui.node_pick.change(selected, inputs=[ui.node_pick, tree, ui.comparing], outputs=[ui.tree_view, ui.compare],
                        **instant)  # fmt: skip
    ui.tree_view.click(clicked, inputs=tree, outputs=ui.node_pick, **instant)
    ui.tree_view.load(lambda n, t: tree_html(History.from_dict(t, root), n), inputs=[ui.node_pick, tree],
                      outputs=ui.tree_view, **instant)  # fmt: skip
    ui.continue_button.click(lambda n, t: continue_node(n, t, root), inputs=[ui.node_pick, tree],
                             outputs=[input_image, continue_from], **private)  # fmt: skip
    ui.compare_button.click(lambda n, t: compare_node(n, t, root), inputs=[ui.node_pick, tree],
                            outputs=[ui.compare, ui.comparing], **private)  # fmt: skip
    ui.restore_button.click(lambda n, t: restore_node(n, t, root, restore), inputs=[ui.node_pick, tree],
                            outputs=[*form, input_image, continue_from], **private)  # fmt: skip
    ui.download_button.click(lambda n, t: download_branch(n, t, root), inputs=[ui.node_pick, tree],
                             outputs=ui.branch_zip, **private)  # fmt: skip


def following_compare(history: History, node: int | None) -> Any:
    """The open Compare for a new selection: the node beside its parent, or hidden for a source image."""
    parent = history.nodes[node].parent if node is not None else None
    if node is None or parent is None:
        return gr.ImageSlider(value=None, visible=False)
    try:
        return gr.ImageSlider(value=(str(history.path(parent)), str(history.path(node))), visible=True)
    except HistoryError:
        return gr.ImageSlider(value=None, visible=False)


# ---- actions on the selected node ---------------------------------------------------------------------------------
def _node(node_id: Any, tree: dict[str, Any], root: Path) -> tuple[History, int]:
    history = History.from_dict(tree, root)
    if node_id is None:
        raise gr.Error("Pick a node in the history first (click it in the tree).")
    try:
        return history, history.node(node_id).id
    except HistoryError as exc:
        raise gr.Error(str(exc)) from None


def continue_node(node_id: Any, tree: dict[str, Any], root: Path) -> tuple[str, int]:
    history, node = _node(node_id, tree, root)
    gr.Info(f"Input set to #{node}: the next run grows a branch from it.")
    return str(history.path(node)), node


def compare_node(node_id: Any, tree: dict[str, Any], root: Path) -> tuple[Any, bool]:
    history, node = _node(node_id, tree, root)
    parent = history.nodes[node].parent
    if parent is None:
        gr.Warning(f"#{node} is a source image; it has no parent to compare with.")
        return gr.skip(), gr.skip()
    gr.Info(f"Comparing #{node} with its parent #{parent}: drag the slider.")
    return gr.ImageSlider(value=(str(history.path(parent)), str(history.path(node))), visible=True), True


def restore_node(node_id: Any, tree: dict[str, Any], root: Path, restore: Restore | None) -> tuple[Any, ...]:
    """The node's recipe into the form (one loop) and its parent as input: Refine then reproduces the node."""
    history, node = _node(node_id, tree, root)
    fields = restore_fields(history.path(node), restore)
    parent = history.nodes[node].parent
    if parent is None:
        return (*fields, gr.skip(), gr.skip())
    gr.Info(f"#{parent} is the input: Refine now reproduces #{node}.")
    return (*fields, str(history.path(parent)), parent)


def download_branch(node_id: Any, tree: dict[str, Any], root: Path) -> Any:
    history, node = _node(node_id, tree, root)
    folder = Path(tempfile.mkdtemp(prefix="atelier-branch-"))
    path = history.export_branch(node, folder / f"atelier-branch-{node}.zip")
    gr.Info(f"The branch of #{node} is ready: {len(history.branch(node))} PNGs and tree.json, below.")
    return gr.File(value=str(path), visible=True)


def restore_fields(path: str | Path | None, restore: Restore | None, quiet: bool = False) -> tuple[Any, ...]:
    """Form values in `RESTORED` order from a PNG's parameters; what it does not state is left as it is.

    `quiet`: an upload without parameters (a photo) is the normal case, not worth a warning."""
    skip = tuple(gr.skip() for _ in RESTORED)
    if path is None or restore is None:
        return skip
    try:
        restored = restore(path)
    except RestoreError as exc:
        if not quiet:
            gr.Warning(str(exc))
        return skip
    gr.Info(restored.note)
    return tuple(restored.values[name] if name in restored.values else gr.skip() for name in RESTORED)
