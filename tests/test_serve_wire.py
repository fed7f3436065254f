"""What crosses between the Ray front and a replica (`studio.serve.wire`), and the local studio's freedom from Ray.
No Ray cluster here: these run in a second."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.engine.contract import Finished, Generated, Result, Saved
from studio.engine.refine import RefineRequest
from studio.images import FileBytes, ImageInputError, load_image
from studio.outputs import Outputs
from studio.serve.wire import Packer, as_bytes, inputs_as_bytes, unpack
from tests.conftest import REPO


def test_an_upload_read_into_bytes_decodes_to_the_same_pixels_and_errors_as_its_file(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGBA", (40, 30), (200, 10, 10, 128)).save(photo)
    sent = pickle.loads(pickle.dumps(inputs_as_bytes(RefineRequest(image=str(photo), prompt="linen"))))
    assert isinstance(sent.image, FileBytes) and sent.prompt == "linen"
    assert np.array_equal(np.asarray(load_image(sent.image, 10**6)), np.asarray(load_image(str(photo), 10**6)))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageInputError, match="empty"):
        load_image(as_bytes(str(empty)), 10**6)
    editor = as_bytes({"background": str(photo), "layers": [str(photo)], "composite": None})
    assert isinstance(editor["background"], FileBytes) and isinstance(editor["layers"][0], FileBytes)
    assert as_bytes("https://example.com/a.png") == "https://example.com/a.png"  # the engine refuses it in words


def test_results_travel_as_bytes_and_land_in_the_fronts_outputs_folder_unchanged(tmp_path: Path) -> None:
    replica, front = Outputs(tmp_path / "scratch"), Outputs(tmp_path / "served")
    image = Image.new("RGB", (16, 16), (1, 2, 3))
    path = replica.save(image, "a coat\nSteps: 2, Seed: 5", "txt2img")
    made = Generated(path=path, image=image, seed=5, infotext="a coat\nSteps: 2, Seed: 5")
    packer = Packer(replica.root)
    saved = pickle.loads(pickle.dumps(packer.ship(Saved(made))))
    finished = pickle.loads(pickle.dumps(packer.ship(Finished(Result([made], 5, {"Seed": 5})))))
    assert len(saved.files) == 1 and finished.files == {}, "each file is shipped once"
    shown = unpack(saved, front).generated
    result = unpack(finished, front).result
    assert front.owns(shown.path) and result.paths == [shown.path]
    assert shown.path.read_bytes() == path.read_bytes()  # the replica's PNG, metadata and all
    assert shown.path.relative_to(front.root) == path.relative_to(replica.root)
    packer.clean()
    assert not path.exists(), "the replica keeps nothing"


def test_a_replica_cannot_write_outside_the_outputs_folder(tmp_path: Path) -> None:
    front = Outputs(tmp_path / "served")
    shipped = Packer(tmp_path).ship(Finished(Result([], 0, {})))
    hostile = dataclasses.replace(shipped, files={"../evil.png": b"x"})
    with pytest.raises(ValueError, match="outside the outputs folder"):
        unpack(hostile, front)
    assert not (tmp_path / "evil.png").exists()


def test_the_local_studio_never_imports_ray(tiny_dir: Path, tmp_path: Path) -> None:
    code = (
        "import sys, app; from studio.settings import Settings; "
        f"s = Settings.from_env({{}}, model='tiny', preload=False, outputs={str(tmp_path)!r}, "
        f"tiny_dir={str(tiny_dir)!r}); "
        "app.build_demo(app.create_studio(s)); "
        "assert 'ray' not in sys.modules, 'the local studio imported Ray'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_picture_field_of_a_mode_sent_to_a_replica_travels_as_bytes(tmp_path: Path) -> None:
    """A replica on another machine cannot open the front's upload paths: every request field that holds pictures
    (one, or a list: the image prompt's, Restyle's further units') is read into bytes before it is sent."""
    from studio.engine.restyle import RestyleRequest
    from studio.modes import BUILTIN
    from studio.serve.wire import IMAGE_FIELDS

    remote = [mode for mode in BUILTIN if mode.gpu]  # what replicas serve (studio.serve.replica.served_modes)
    picture_fields = {f.name for mode in remote for f in dataclasses.fields(mode.request) if f.name.endswith("image")}
    assert picture_fields <= set(IMAGE_FIELDS), picture_fields - set(IMAGE_FIELDS)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (10, 200, 10)).save(photo)
    request = RestyleRequest(image=str(photo), prompt="gown", control_image=(str(photo),),
                             ip_adapter_image=(str(photo), {"path": str(photo)}))  # fmt: skip
    sent = pickle.loads(pickle.dumps(inputs_as_bytes(request)))
    pictures = [sent.image, *sent.control_image, *sent.ip_adapter_image]
    assert len(pictures) == 4 and all(isinstance(p, FileBytes) for p in pictures)
