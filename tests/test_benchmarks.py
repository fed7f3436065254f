"""The studio benchmark (benchmarks/bench_studio.py) runs on CPU in CI time and reports every comparison."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RATIO = re.compile(
    r"^ratio (txt2img|restyle|inpaint) 64px batch 1 3 steps: Atelier ([\d.]+) ms/image, "
    r"diffusers ([\d.]+) ms/image, speedup ([\d.]+)x",
    re.MULTILINE,
)
MEMORY = re.compile(
    r"^ratio memory: Atelier ([\d,]+) MiB resident with all five modes, separate pipelines "
    r"([\d,]+) MiB",
    re.MULTILINE,
)
SWITCH = re.compile(
    r"^ratio switch (\w+) 64px: first use [\d.]+ ms, after switching [\d.]+ ms, repeat [\d.]+ ms, "
    r"switch/repeat ([\d.]+)",
    re.MULTILINE,
)


def test_quick_benchmark_prints_every_ratio_and_appends_a_markdown_record(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    out.write_text("# earlier results\n")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_studio.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    speed = {
        mode: (float(ours), float(theirs), float(speedup)) for mode, ours, theirs, speedup in RATIO.findall(done.stdout)
    }
    assert set(speed) == {"txt2img", "restyle", "inpaint"}, done.stdout
    for ours, theirs, speedup in speed.values():  # the printed speedup is the ratio of the printed times
        assert ours > 0 and theirs > 0 and abs(speedup - theirs / ours) <= 0.01 * speedup + 0.002

    resident, separate = (int(x.replace(",", "")) for x in MEMORY.search(done.stdout).groups())
    assert 0 < resident < separate  # five modes share one base: counted once in the studio, five times apart

    switch = dict(SWITCH.findall(done.stdout))
    assert set(switch) == {"txt2img", "refine", "textile", "inpaint", "restyle"}, done.stdout

    record = out.read_text()
    assert record.startswith("# earlier results\n")  # appended, never overwritten
    assert "torch " in record and "diffusers " in record and "bench_studio.py --quick" in record
    assert record.count("| txt2img |") == 2 and "| restyle | 64 | 1 |" in record and "| inpaint | 64 | 1 |" in record


def test_lora_wrapper_benchmark_counts_the_layers_lcm_lora_wraps_in_sd15(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_lora_wrappers.py"), "--calls", "2000", "--repeats", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "layers LCM-LoRA wraps in SD1.5's UNet: 278" in done.stdout  # the target modules of studio.tiny
    assert re.search(r"overhead per UNet call: -?[\d.]+ ms", done.stdout), done.stdout  # timing: printed, not judged
