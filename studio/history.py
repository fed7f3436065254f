"""Refine's history: a tree of result files, small and JSON-serialisable (no images, only paths in outputs).

A node is `{"id", "file", "parent", "children", "loop", "seed", "strength"}`; `file` is relative to the outputs
folder, and the full recipe lives in the PNG's own `parameters`. The tree travels as a plain dict (Gradio state,
the browser's localStorage), so everything read back from a browser is treated as untrusted: `History.from_dict`
keeps only nodes whose files lie inside the outputs folder and exist.

A *branch* of a node is its line back to the root plus everything grown from it: for a leaf, exactly the path
the designer took to reach it.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from studio.metadata import read_parameters

log = logging.getLogger(__name__)
VERSION = 1


class HistoryError(ValueError):
    """A node that does not exist (any more) in this session's history."""


@dataclass
class Node:
    id: int
    file: str  # posix path relative to the outputs folder
    parent: int | None
    children: list[int] = field(default_factory=list)
    loop: int = 0  # 0: a source image
    seed: int | None = None
    strength: float | None = None

    def label(self) -> str:
        if self.parent is None:
            return f"#{self.id} source"
        return f"#{self.id} ← #{self.parent}, s={self.strength:g}, seed {self.seed}"


@dataclass
class History:
    root: Path  # the outputs folder
    nodes: dict[int, Node] = field(default_factory=dict)

    # ---- (de)serialisation ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "nodes": [asdict(n) for n in self.nodes.values()]}

    @classmethod
    def from_dict(cls, data: Any, root: Path) -> History:
        """Rebuild from untrusted JSON: nodes with foreign, missing or malformed entries are dropped."""
        history = cls(root=Path(root).resolve())
        if not isinstance(data, dict) or data.get("version") != VERSION:
            return history
        for raw in data.get("nodes") or []:
            try:
                node = Node(
                    id=int(raw["id"]),
                    file=str(raw["file"]),
                    parent=_optional(int, raw.get("parent")),
                    loop=int(raw.get("loop", 0)),
                    seed=_optional(int, raw.get("seed")),
                    strength=_optional(float, raw.get("strength")),
                )
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
            if history.resolve(node.file) is not None and node.id not in history.nodes:
                history.nodes[node.id] = node
        for node in history.nodes.values():  # rebuild links from parents: children lists are never trusted
            if node.parent not in history.nodes or node.parent == node.id:
                node.parent = None
        for node in history.nodes.values():
            if node.parent is not None:
                history.nodes[node.parent].children.append(node.id)
        history._break_cycles()
        return history

    def _break_cycles(self) -> None:
        for node in self.nodes.values():
            seen, current = {node.id}, node.parent
            while current is not None:
                if current in seen:
                    self.nodes[current].parent = None  # cut the loop where it closes
                    break
                seen.add(current)
                current = self.nodes[current].parent
        for node in self.nodes.values():
            node.children = sorted(c for c in node.children if self.nodes[c].parent == node.id)

    def resolve(self, file: str) -> Path | None:
        """The absolute path of a node's file, or None when it is not an existing file inside the outputs."""
        path = (self.root / file).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    # ---- growing ------------------------------------------------------------------------------------------
    def relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    def find(self, path: Path) -> int | None:
        file = self.relative(path)
        return next((n.id for n in self.nodes.values() if n.file == file), None)

    def add(
        self,
        path: Path,
        parent: Path | None = None,
        *,
        loop: int = 0,
        seed: int | None = None,
        strength: float | None = None,
    ) -> int:
        """Add a result file under its parent file (which becomes a new root when not in the tree yet)."""
        parent_id = None
        if parent is not None:
            parent_id = self.find(parent)
            if parent_id is None:
                parent_id = self.add(parent)
        node = Node(
            id=max(self.nodes, default=0) + 1,
            file=self.relative(path),
            parent=parent_id,
            loop=loop,
            seed=seed,
            strength=strength,
        )
        self.nodes[node.id] = node
        if parent_id is not None:
            self.nodes[parent_id].children.append(node.id)
        return node.id

    # ---- reading ---------------------------------------------------------------------------------------------
    def node(self, node_id: Any) -> Node:
        try:
            return self.nodes[int(node_id)]
        except (KeyError, TypeError, ValueError):
            raise HistoryError("That history entry no longer exists; pick one from the list.") from None

    def path(self, node_id: Any) -> Path:
        node = self.node(node_id)
        path = self.resolve(node.file)
        if path is None:
            raise HistoryError(f"The file of #{node.id} is gone from the outputs folder.")
        return path

    def lineage(self, node_id: Any) -> list[int]:
        """Root … node."""
        line = [self.node(node_id).id]
        while (parent := self.nodes[line[-1]].parent) is not None:
            line.append(parent)
        return line[::-1]

    def descendants(self, node_id: Any) -> list[int]:
        found, stack = [], list(self.node(node_id).children)
        while stack:
            current = stack.pop()
            found.append(current)
            stack.extend(self.nodes[current].children)
        return sorted(found)

    def branch(self, node_id: Any) -> list[int]:
        return sorted(set(self.lineage(node_id)) | set(self.descendants(node_id)))

    def ordered(self) -> list[tuple[int, int]]:
        """(node id, depth) in depth-first order: every node right under its parent, siblings by id."""
        rows: list[tuple[int, int]] = []
        stack = [(n.id, 0) for n in sorted(self.nodes.values(), key=lambda n: -n.id) if n.parent is None]
        while stack:
            node_id, depth = stack.pop()
            rows.append((node_id, depth))
            stack.extend((c, depth + 1) for c in reversed(self.nodes[node_id].children))
        return rows

    def choices(self) -> list[tuple[str, int]]:
        """Labels for a picker, indented by depth: `#3 ← #2, s=0.75, seed 123`."""
        return [("\u2003" * depth + self.nodes[i].label(), i) for i, depth in self.ordered()]

    # ---- export -------------------------------------------------------------------------------------------
    def export_branch(self, node_id: Any, dest: Path) -> Path:
        """A zip of the branch's PNGs (copied byte for byte, metadata included) and `tree.json`."""
        ids = self.branch(node_id)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        entries = []
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as archive:
            for i in ids:
                node, path = self.nodes[i], self.path(i)
                name = f"{i:03d}-{path.name}"
                archive.write(path, name)
                with Image.open(path) as image:
                    parameters = read_parameters(image)
                entries.append(
                    {
                        **asdict(node),
                        "children": [c for c in node.children if c in ids],
                        "parent": node.parent if node.parent in ids else None,
                        "image": name,
                        "parameters": parameters,
                    }
                )
            tree = {"version": VERSION, "selected": self.node(node_id).id, "nodes": entries}
            archive.writestr("tree.json", json.dumps(tree, indent=2, ensure_ascii=False))
        return dest


def _optional(kind: type, value: Any) -> Any:
    return None if value is None else kind(value)
