"""Settings come from env and flags, are frozen, and refuse unsafe or unusable values with the fix named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from studio.settings import Settings, SettingsError, parse_args

REFUSAL = "Serving beyond this machine (--listen, --host or --share) requires --auth USER:PASSWORD."


def test_env_values_are_parsed_and_flags_override_them():
    env = {"STUDIO_MODEL": "sd15", "STUDIO_PORT": "9000", "STUDIO_MAX_STEPS": "40", "STUDIO_OUTPUTS": "/tmp/x"}
    settings = parse_args(["--model", "tiny"], env=env)
    assert settings.model == "tiny" and settings.port == 9000 and settings.outputs == Path("/tmp/x")
    assert settings.limits.max_steps == 40
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.model = "other"  # type: ignore[misc]


def test_defaults_are_safe():
    settings = Settings.from_env({})
    assert settings.host == "127.0.0.1" and not settings.share and settings.auth is None
    assert settings.model == "dreamlike-photoreal-2.0" and settings.max_resident_models == 1


@pytest.mark.parametrize("argv", [["--listen"], ["--share"], ["--host", "0.0.0.0"]])
def test_serving_beyond_localhost_requires_auth(argv, capsys):
    with pytest.raises(SystemExit) as exited:  # on the command line: argparse's way, status 2 and one line
        parse_args(argv, env={})
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"app.py: error: {REFUSAL}"]
    with pytest.raises(SettingsError, match="--auth"):  # in code: the error itself
        Settings.from_env({}, host="0.0.0.0")
    assert parse_args([*argv, "--auth", "ann:secret"], env={}).auth == ("ann", "secret")


def test_bad_numbers_name_the_variable(capsys):
    with pytest.raises(SettingsError, match="STUDIO_PORT"):
        Settings.from_env({"STUDIO_PORT": "eighty"})
    with pytest.raises(SystemExit):
        parse_args([], env={"STUDIO_PORT": "eighty"})
    assert capsys.readouterr().err == "app.py: error: STUDIO_PORT must be a whole number, got 'eighty'.\n"


def test_a_hugging_face_space_gets_public_demo_defaults():
    settings = Settings.from_env({"SPACE_ID": "atelier/demo"})
    assert settings.space and settings.public_demo and settings.host == "0.0.0.0"
    assert settings.model == "sd15" and "nsfw" in settings.default_negative_prompt
    assert Settings.from_env({"SPACE_ID": "x", "STUDIO_MODEL": "tiny"}).model == "tiny"


def test_public_demo_flag_turns_on_the_default_negative_prompt():
    settings = parse_args(["--public-demo"], env={})
    assert settings.public_demo and "nsfw" in settings.default_negative_prompt


def test_the_engine_is_local_unless_ray_is_asked_for(capsys):
    assert Settings.from_env({}).engine == "local"
    assert parse_args([], env={"STUDIO_ENGINE": "ray"}).engine == "ray"
    settings = parse_args(["--engine", "ray", "--ray-address", "127.0.0.1:6390"], env={"STUDIO_ENGINE": "local"})
    assert settings.engine == "ray" and settings.ray_address == "127.0.0.1:6390"
    with pytest.raises(SettingsError, match="use local"):
        Settings.from_env({"STUDIO_ENGINE": "cluster"})
    with pytest.raises(SettingsError, match="STUDIO_RAY_MIN_REPLICAS"):
        Settings.from_env({"STUDIO_RAY_MIN_REPLICAS": "3", "STUDIO_RAY_MAX_REPLICAS": "2"})


def test_a_replica_takes_a_batch_and_the_front_lets_every_slot_wait():
    local = Settings.from_env({"STUDIO_MAX_BATCH_SIZE": "6"})
    assert local.max_ongoing == 6 and local.engine_concurrency == 1
    ray = Settings.from_env({"STUDIO_MAX_BATCH_SIZE": "6", "STUDIO_ENGINE": "ray", "STUDIO_RAY_MAX_REPLICAS": "3"})
    assert ray.engine_concurrency == 18
    assert Settings.from_env({"STUDIO_RAY_MAX_ONGOING": "2"}).max_ongoing == 2
