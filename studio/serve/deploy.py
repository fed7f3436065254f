"""The Engine deployment on a Ray cluster, and a local cluster to put it on (`python -m studio.serve up` / `down`).

Ray is imported here and in `studio.serve.client` only: the single-process studio never loads it.

Every Ray address the studio starts is on loopback: the head binds 127.0.0.1 (with
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, without which Ray swaps 127.0.0.1 for the machine's external interface), the
dashboard too, and Serve runs no HTTP proxy at all (the studio's front calls the deployment through a handle).
A multi-machine cluster is started by the operator (`ray start`, see the README) and only deployed to here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import ray
from ray import serve

from studio.serve import LOOPBACK_ENV
from studio.serve.replica import EngineReplica
from studio.settings import DEFAULT_CACHE, Settings

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = "Engine"
HEAD_MARKER = DEFAULT_CACHE / "ray-head"  # written by `up` when it started the head, so `down` stops only that one
# Passed on to replicas when the front has them (offline weights, quiet OpenMP threads on small CPU machines)
REPLICA_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "OMP_WAIT_POLICY", "GRADIO_ANALYTICS_ENABLED")


def connect(address: str) -> None:
    """Join the cluster at `address` ("auto": the one this machine runs) as a driver, once per process."""
    if not ray.is_initialized():
        ray.init(address=address, namespace="atelier", log_to_driver=False, logging_level=logging.WARNING)


def start_head(port: int, dashboard: bool = True, num_cpus: int | None = None) -> str:
    """`ray start --head` on loopback; returns the address to join (127.0.0.1:port)."""
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    command = [ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--disable-usage-stats",
               "--dashboard-host=127.0.0.1", f"--include-dashboard={str(dashboard).lower()}"]  # fmt: skip
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    subprocess.run(command, check=True, env={**os.environ, **LOOPBACK_ENV}, capture_output=True)
    HEAD_MARKER.parent.mkdir(parents=True, exist_ok=True)
    HEAD_MARKER.write_text(f"127.0.0.1:{port}\n")
    return f"127.0.0.1:{port}"


def stop_head() -> bool:
    """`ray stop` when `up` started this machine's head; False when it did not."""
    if not HEAD_MARKER.exists():
        return False
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    subprocess.run([ray_cli, "stop"], check=False, capture_output=True)
    HEAD_MARKER.unlink(missing_ok=True)
    return True


def application(settings: Settings) -> Any:
    """The Engine deployment for `settings`: one GPU per replica when the cluster has GPUs, one CPU otherwise; a
    fixed number of replicas, or autoscaling between min and max on ongoing requests per replica; each replica
    takes `max_ongoing` requests at once (the batch size: a full batch can meet inside it)."""
    gpus = ray.cluster_resources().get("GPU", 0) >= 1
    env = {"PYTHONPATH": str(REPO), **{k: os.environ[k] for k in REPLICA_ENV if k in os.environ}}
    scaling: dict[str, Any] = (
        {"num_replicas": settings.ray_min_replicas}
        if settings.ray_min_replicas == settings.ray_max_replicas
        else {
            "autoscaling_config": {
                "min_replicas": settings.ray_min_replicas,
                "max_replicas": settings.ray_max_replicas,
                "target_ongoing_requests": settings.ray_target_ongoing or settings.max_ongoing,
            }
        }
    )
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = settings.ray_threads or (0 if gpus else max(1, cpus // settings.ray_max_replicas))
    deployment: Any = serve.deployment(
        EngineReplica,
        name=DEPLOYMENT,
        max_ongoing_requests=settings.max_ongoing,
        ray_actor_options={
            "num_gpus": 1 if gpus else 0,
            "num_cpus": 0 if gpus else 1,
            "runtime_env": {"env_vars": env},
        },
        **scaling,
    )
    return deployment.bind(settings, threads)


def deploy(settings: Settings) -> Any:
    """Deploy (or update in place) the application `settings.ray_app`; returns its handle once every replica is up."""
    serve.start(proxy_location="Disabled")
    return serve.run(application(settings), name=settings.ray_app, route_prefix=None)


def listening(address: str) -> bool:
    """Something answers at host:port (Ray's own connect waits a minute for a head that is not there)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


def up(settings: Settings, port: int = 6379, dashboard: bool = True) -> str:
    """Join the cluster at `settings.ray_address`, or start a local head on loopback when none runs; deploy."""
    address = settings.ray_address
    if address == "auto":
        try:
            connect(address)
        except ConnectionError:
            address = start_head(port, dashboard)
    elif not listening(address):
        if address != f"127.0.0.1:{port}":
            raise ConnectionError(f"No Ray cluster answers at {address}; start one there (ray start --head).")
        address = start_head(port, dashboard)
    connect(address)
    deploy(dataclasses.replace(settings, ray_address=address))
    return address if address != "auto" else ray.get_runtime_context().gcs_address


def down(settings: Settings) -> None:
    """Delete the application; with no application left, shut Serve down and stop the head `up` started."""
    address = settings.ray_address
    try:
        if address != "auto" and not listening(address):
            raise ConnectionError(address)
        connect(address)
    except ConnectionError:
        stop_head()
        return
    serve.delete(settings.ray_app)
    if not serve.status().applications:
        serve.shutdown()
        ray.shutdown()
        stop_head()
