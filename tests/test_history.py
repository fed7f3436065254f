"""Refine's history tree: small JSON, branches, untrusted copies, branch zips (no model needed)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.history import History, HistoryError
from studio.metadata import read_parameters
from studio.outputs import Outputs


def _png(outputs: Outputs, shade: int) -> Path:
    image = Image.fromarray(np.full((16, 16, 3), shade, np.uint8))
    return outputs.save(image, f"look {shade}\nSteps: 2, Seed: {shade}, Size: 16x16", "refine")


@pytest.fixture
def outputs(tmp_path: Path) -> Outputs:
    return Outputs(tmp_path / "outputs")


def _chain(history: History, outputs: Outputs, start: Path, count: int) -> list[Path]:
    paths, parent = [], start
    for loop in range(1, count + 1):
        path = _png(outputs, len(history.nodes) * 10 + loop)
        history.add(path, parent, loop=loop, seed=loop, strength=0.5)
        paths.append(path)
        parent = path
    return paths


def test_branch_from_a_middle_node_is_a_sibling_subtree_and_its_zip_holds_exactly_the_branch(outputs, tmp_path):
    history = History(outputs.root)
    source = _png(outputs, 1)
    first = _chain(history, outputs, source, 3)  # source(1) -> 2 -> 3 -> 4
    second = _chain(history, outputs, first[0], 2)  # from the middle node 2: -> 5 -> 6
    assert history.node(2).children == [3, 5]
    assert history.lineage(6) == [1, 2, 5, 6]
    assert history.branch(6) == [1, 2, 5, 6] and history.branch(4) == [1, 2, 3, 4]

    zip_path = history.export_branch(6, tmp_path / "branch.zip")
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        tree = json.loads(archive.read("tree.json"))
        expected = {source, first[0], *second}
        assert names == {"tree.json"} | {f"{history.find(p):03d}-{p.name}" for p in expected}
        for entry in tree["nodes"]:
            data = archive.read(entry["image"])
            assert data == history.path(entry["id"]).read_bytes()  # byte for byte: the metadata travels
            assert entry["parameters"] == read_parameters(Image.open(history.path(entry["id"])))
    assert [n["id"] for n in tree["nodes"]] == [1, 2, 5, 6]
    assert {n["id"]: n["children"] for n in tree["nodes"]} == {1: [2], 2: [5], 5: [6], 6: []}


def test_tree_round_trips_through_json_and_stays_small(outputs):
    history = History(outputs.root)
    _chain(history, outputs, _png(outputs, 1), 4)
    data = json.loads(json.dumps(history.to_dict()))
    again = History.from_dict(data, outputs.root)
    assert again.to_dict() == history.to_dict()
    assert len(json.dumps(data)) < 300 * len(history.nodes)  # ids and paths, no pixels


def test_untrusted_copy_keeps_only_existing_files_inside_outputs(outputs, tmp_path):
    history = History(outputs.root)
    paths = _chain(history, outputs, _png(outputs, 1), 2)
    data = history.to_dict()
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    data["nodes"] += [
        {"id": 10, "file": str(outside), "parent": 1},
        {"id": 11, "file": "../secret.png", "parent": 1},
        {"id": 12, "file": "2020-01-01/missing.png", "parent": None},
        {"id": "x", "file": 3},
        {"id": 13, "file": history.nodes[2].file, "parent": [1]},
    ]
    data["nodes"][0]["parent"] = 2  # a cycle: 1 -> 2 -> 1
    paths[-1].unlink()  # node 3's file was deleted from the outputs folder
    restored = History.from_dict(data, outputs.root)
    assert sorted(restored.nodes) == [1, 2]
    assert all(restored.path(i).is_relative_to(outputs.root) for i in restored.nodes)
    assert restored.lineage(2) == [1, 2] and restored.nodes[1].children == [2]
    assert History.from_dict("garbage", outputs.root).nodes == {}
    with pytest.raises(HistoryError, match="no longer exists"):
        restored.node(3)


def test_picker_lists_each_node_under_its_parent_with_strength_and_seed(outputs):
    history = History(outputs.root)
    first = _chain(history, outputs, _png(outputs, 1), 2)
    _chain(history, outputs, first[0], 1)
    assert [i for i, _ in history.ordered()] == [1, 2, 3, 4]
    labels = dict((i, label) for label, i in history.choices())
    assert labels[1].strip() == "#1 source"
    assert labels[3].strip() == "#3 ← #2, s=0.5, seed 2"
    assert labels[4].startswith("\u2003\u2003") and not labels[2].startswith("\u2003\u2003")
