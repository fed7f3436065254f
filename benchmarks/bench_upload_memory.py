"""Peak memory growth of the served studio while it refuses an image that is small on disk and vast decoded.

    .venv/bin/python benchmarks/bench_upload_memory.py [--out benchmarks/RESULTS.md]

Starts `python app.py --model tiny` in a process of its own (so its peak RSS is its own, not this script's), sends a
PNG of 11000 x 11000 pixels (121 MP, a few hundred KB) to `/refine` through gradio_client and reads the server's
peak resident memory (`VmHWM` in /proc) before and after. The studio checks sides and pixels from the file's header
before decoding (studio.images) and Gradio no longer opens uploads itself (studio/ui/uploads.py), so the refusal
should cost at most a few MB; the goal is under 50 MB. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gradio_client import Client, handle_file
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, server: subprocess.Popen[bytes], timeout: float = 180) -> Client:
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError("the studio exited before serving")
        try:
            return Client(url, verbose=False)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="append a markdown record to this file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="atelier-mem-"))
    bomb = work / "vast.png"
    Image.new("RGB", (11000, 11000), (200, 180, 160)).save(bomb, optimize=True)
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    command = [sys.executable, "app.py", "--model", "tiny", "--port", str(port), "--outputs", str(work / "outputs")]
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = wait_for(f"http://127.0.0.1:{port}/", server)
        client.predict(prompt="warm-up", num_inference_steps=1, api_name="/txt2img")  # model resident first
        before = peak_rss_mb(server.pid)
        try:
            client.predict(image=handle_file(str(bomb)), prompt="coat", num_inference_steps=2, api_name="/refine")
            refused = "not refused"
        except Exception as exc:
            refused = str(exc).splitlines()[0]
        after = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    size_kb = bomb.stat().st_size / 1024
    lines = [
        "## Refusing a vast image: peak memory of the server (`benchmarks/bench_upload_memory.py`)",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; Python "
        f"{platform.python_version()}",
        f"- Command: `python benchmarks/bench_upload_memory.py{' --out ' + str(args.out) if args.out else ''}`",
        f"- File: PNG 11000x11000 (121 MP), {size_kb:,.0f} KB on disk, sent to /refine through gradio_client",
        f"- Answer: {refused}",
        f"- Server peak RSS (VmHWM): {before:,.1f} MB before, {after:,.1f} MB after: **+{after - before:,.1f} MB** "
        "(goal < 50 MB)",
        "",
    ]
    print("\n".join(lines))
    if args.out:
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
