"""`python -m studio.serve up --replicas N` / `down`: the Engine deployment on this machine (or a cluster).

`up` joins the Ray cluster at `--address` (default: the one this machine runs) or, when none runs, starts a head
on loopback; deploys the Engine with the studio's settings (STUDIO_* variables, `--model`); and prints the address
for `python app.py --engine ray --ray-address ADDRESS`. `down` deletes the deployment, and stops the head when
`up` started it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from studio.settings import Settings, SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.serve", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start (or join) a Ray cluster and deploy the Engine")
    up.add_argument("--replicas", type=int, help="a fixed number of replicas (one per GPU on GPU nodes)")
    up.add_argument("--min-replicas", type=int, help="autoscaling: at least this many replicas")
    up.add_argument("--max-replicas", type=int, help="autoscaling: at most this many replicas")
    up.add_argument("--target-ongoing", type=int, help="autoscaling: ongoing requests per replica to aim at")
    up.add_argument("--model", help="the checkpoint replicas load (registry name, hub id or folder)")
    up.add_argument("--port", type=int, default=6379, help="the local head's port when one is started")
    up.add_argument("--no-dashboard", action="store_true", help="start the local head without Ray's dashboard")
    for command in (up, commands.add_parser("down", help="delete the deployment (and the head `up` started)")):
        command.add_argument("--address", help="the Ray cluster (default auto: this machine's)")
        command.add_argument("--app", help="the Serve application's name (default atelier)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    fixed = getattr(args, "replicas", None)
    overrides: dict[str, object] = {
        "ray_address": args.address,
        "ray_app": args.app,
        "model": getattr(args, "model", None),
        "ray_min_replicas": fixed or getattr(args, "min_replicas", None),
        "ray_max_replicas": fixed or getattr(args, "max_replicas", None),
        "ray_target_ongoing": getattr(args, "target_ongoing", None),
        "engine": "ray",
    }
    try:
        settings = Settings.from_env(None, **overrides)
    except SettingsError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    from studio.serve import deploy  # Ray is imported only now

    if args.command == "down":
        deploy.down(settings)
        print(f"Deleted the Serve application {settings.ray_app!r}.")
        return 0
    address = deploy.up(settings, port=args.port, dashboard=not args.no_dashboard)
    print(
        f"Atelier's Engine serves on the Ray cluster at {address}: python app.py --engine ray --ray-address {address}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
