"""What a disabled LoRA costs a UNet call it is not used in: why drafts run a UNet of their own.

With the LoRA loaded into the shared UNet and disabled (the studio's first draft design), every LoRA-targeted layer
is a peft wrapper that checks its switches and then calls the plain layer: Python work on every call of every
mode, which a GPU in eager mode waits for. This measures that per-layer cost on a tiny layer (so the layer's own
compute is negligible), counts the layers LCM-LoRA wraps in SD1.5's UNet (built on the meta device from the
real config: no weights), and prints the overhead per UNet call. Now drafts use `ModelCache.draft_unet` and the
base UNet carries no wrapper at all.

    .venv/bin/python benchmarks/bench_lora_wrappers.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studio.tiny import LCM_LORA_TARGETS  # noqa: E402

# SD1.5's UNet (stable-diffusion-v1-5/unet/config.json, the architecture every SD1.5 checkpoint shares)
SD15_UNET = dict(
    cross_attention_dim=768,
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    sample_size=64,
)


class One(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_q(x)


def per_call_us(module: torch.nn.Module, calls: int) -> float:
    x = torch.randn(1, 8)
    with torch.no_grad():
        for _ in range(1000):
            module(x)
        start = time.perf_counter()
        for _ in range(calls):
            module(x)
    return (time.perf_counter() - start) / calls * 1e6


def wrapped_layers() -> int:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    return sum(
        name.endswith(LCM_LORA_TARGETS) and isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
        for name, m in unet.named_modules()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from peft import LoraConfig, inject_adapter_in_model

    torch.set_num_threads(1)
    plain, wrapped = One(), One()
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["to_q"]), wrapped, adapter_name="lcm")
    for module in wrapped.modules():
        if hasattr(module, "enable_adapters"):
            module.enable_adapters(False)  # loaded but disabled, as between drafts
    extra = statistics.median(
        per_call_us(wrapped, args.calls) - per_call_us(plain, args.calls) for _ in range(args.repeats)
    )
    layers = wrapped_layers()
    print(f"disabled LoRA wrapper: +{extra:.2f} us per layer call (median of {args.repeats})")
    print(f"layers LCM-LoRA wraps in SD1.5's UNet: {layers}")
    print(
        f"overhead per UNet call: {extra * layers / 1000:.2f} ms of Python on this CPU "
        f"(SD1.5 512 px eager on an H100 takes ~18.5 ms per step: FIELD_NOTES' 54 it/s anchor)"
    )


if __name__ == "__main__":
    main()
