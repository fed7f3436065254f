"""The studio on Ray Serve (issue 19): throughput with 1 and 2 Engine replicas, and the latency the Ray path adds.

    .venv/bin/python benchmarks/bench_serve.py                     # tiny, 64 px, 4 steps, 16 concurrent (~3 min)
    .venv/bin/python benchmarks/bench_serve.py --out benchmarks/RESULTS.md

- **Throughput:** `--concurrent` txt2img requests (distinct prompts and seeds) sent at once through the front's
  `RemoteEngine` (what `app.py --engine ray` runs), first to 1 replica, then, after an in-place redeploy, to 2:
  images per second of the whole burst, best of `--bursts`. Goal on the 2-core build machine: 2 replicas ≥ 1.5×.
- **Added latency:** one request at a time, the same request through the local engine (this process, the studio's
  own batcher as the app binds it) and through the Ray path with 1 replica (the same engine in a replica: handle
  round trip, pickling, PNG bytes shipped and written by the front), alternating request by request: medians over
  `--runs`, the difference.
  Goal: < 30 ms per request.

A local Ray cluster is started on loopback in this process and shut down at the end (nothing is left running).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import studio.serve  # noqa: E402,F401  (sets Ray's loopback environment before Ray is imported)
from studio import tiny  # noqa: E402
from studio.cache import ModelCache  # noqa: E402
from studio.engine.contract import Job, Studio  # noqa: E402
from studio.engine.txt2img import Txt2ImgRequest  # noqa: E402
from studio.modes import TXT2IMG, bind  # noqa: E402
from studio.outputs import Outputs  # noqa: E402
from studio.settings import Settings  # noqa: E402


def request(index: int, args: argparse.Namespace) -> Txt2ImgRequest:
    return Txt2ImgRequest(
        prompt=f"a wool coat, look {index}", num_inference_steps=args.steps, width=args.size, height=args.size,
        seed=1000 + index,
    )  # fmt: skip


def burst(run, args: argparse.Namespace) -> float:  # type: ignore[no-untyped-def]
    """Images per second for `--concurrent` requests sent at once."""
    with ThreadPoolExecutor(args.concurrent) as pool:
        started = time.perf_counter()
        results = list(pool.map(lambda i: run(request(i, args), Job()), range(args.concurrent)))
        elapsed = time.perf_counter() - started
    return sum(len(r.images) for r in results) / elapsed


def latencies(runs: dict[str, object], args: argparse.Namespace) -> dict[str, float]:
    """Median ms per request for each path, the paths alternating request by request (the first is a warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(args.runs + 1):
        for name, run in runs.items():
            started = time.perf_counter()
            run(request(index, args), Job())  # type: ignore[operator]
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values[1:]) * 1000 for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    from studio.serve import deploy
    from studio.serve.client import RemoteEngine

    tiny_dir = tiny.write_all(REPO / ".cache" / "tiny")
    outputs = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", namespace="atelier",
             log_to_driver=False)  # fmt: skip
    try:
        settings = Settings.from_env({}, tiny_dir=tiny_dir, outputs=outputs, model="tiny", preload=False, engine="ray")
        front = Studio(cache=ModelCache(settings), outputs=Outputs(outputs))
        rows: dict[str, float] = {}
        for replicas in (1, 2):
            scaled = dataclasses.replace(settings, ray_min_replicas=replicas, ray_max_replicas=replicas)
            started = time.perf_counter()
            engine = RemoteEngine(scaled, deploy.deploy(scaled))
            print(f"{replicas} replica(s) deployed in {time.perf_counter() - started:.1f} s", flush=True)
            run = engine.bind(TXT2IMG, front).run
            run(request(0, args), Job())  # warm
            rows[f"ray{replicas}"] = max(burst(run, args) for _ in range(args.bursts))
            print(f"{replicas} replica(s): {rows[f'ray{replicas}']:.2f} images/s", flush=True)
            if replicas == 1:  # one request at a time: the same engine here and in the replica (both all cores)
                torch.set_num_threads(cpus)
                local = Studio(cache=ModelCache(dataclasses.replace(settings, engine="local")), outputs=front.outputs)
                paths = {"local_latency": bind(TXT2IMG, local).run, "ray_latency": run}
                rows.update(latencies(paths, args))
        serve.shutdown()
    finally:
        ray.shutdown()
    report(rows, args, cpus)


def report(rows: dict[str, float], args: argparse.Namespace, cpus: int) -> None:
    added = rows["ray_latency"] - rows["local_latency"]
    scale = rows["ray2"] / rows["ray1"]
    lines = [
        "## Ray Serve: replicas and the added latency (`benchmarks/bench_serve.py`, issue 19)",
        f"- Machine: {platform.processor() or platform.machine()}, {cpus} CPUs, no GPU; Python "
        f"{platform.python_version()}; tiny checkpoint, {args.size} px, {args.steps} steps, DPM++ 2M Karras",
        f"- Command: `python benchmarks/bench_serve.py --concurrent {args.concurrent} --bursts {args.bursts} "
        f"--runs {args.runs} --steps {args.steps} --size {args.size}`",
        "",
        "| measure | value | goal |",
        "| --- | --- | --- |",
        f"| {args.concurrent} concurrent requests, 1 replica | {rows['ray1']:.2f} images/s | |",
        f"| {args.concurrent} concurrent requests, 2 replicas | {rows['ray2']:.2f} images/s | |",
        f"| 2 replicas / 1 replica | **{scale:.2f}x** | ≥ 1.5x |",
        f"| one request, local engine (median of {args.runs}) | {rows['local_latency']:.1f} ms | |",
        f"| one request, Ray path, 1 replica (median of {args.runs}) | {rows['ray_latency']:.1f} ms | |",
        f"| added by the Ray path | **{added:.1f} ms** | < 30 ms |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with args.out.open("a") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
