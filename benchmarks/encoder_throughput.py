"""Benchmark: encoder training and inference throughput on this machine's CPU.

    python benchmarks/encoder_throughput.py [--seconds 8] [--batch 16]

For 64^3 and 28^3 crops with 1 and 2 channels, prints crops per second for a full training
step (batched augmentation + forward + backward + AdamW) and for inference (no augmentation,
no TTA), the FLOPs of one forward pass, the achieved GFLOP/s, and beside them a dense fp32
matmul measured in the same run, so the figures can be read against what the CPU can do.
Targets (DESIGN.md, 2 cores, 64^3): >= 40 crops/s training, >= 150 crops/s inference; and, read against the
matmul of the same run (a faster or slower machine moves both), the encoder's achieved GFLOP/s at 64^3 with 2
channels >= 40% of the matmul's for inference and >= 30% for training (the "ratio" columns).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def matmul_gflops(seconds: float) -> float:
    """GFLOP/s of a dense float32 matmul (the machine's reference speed)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 1024 ** 3 * n / (time.perf_counter() - start) / 1e9


def measure(size: int, channels: int, batch: int, seconds: float, config) -> dict:
    """Training and inference crops per second, FLOPs and peak memory of one encoder setting."""
    from fusion_model.encoder.network import count_flops
    from fusion_model.encoder.train import build_network, unnamed_channels
    from fusion_model.encoder.transforms import BatchAugmentation

    torch.manual_seed(0)
    model = build_network(config, unnamed_channels(channels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    augmentation = BatchAugmentation(1.0, (-200.0, 300.0))
    rng = np.random.default_rng(0)
    crops = rng.random((batch, channels, size, size, size)).astype(np.float16)
    crops[:, -1] = crops[:, -1] > 0.7
    labels = torch.as_tensor(rng.integers(0, 2, batch), dtype=torch.float32)

    def train_step():
        x = augmentation(torch.from_numpy(crops).float(), rng)
        logits, _ = model(x)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.train()
    train_step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        train_step()
        n += batch
    train_rate = n / (time.perf_counter() - start)

    model.eval()
    x = torch.from_numpy(np.repeat(crops, 4, axis=0).astype(np.float32))
    with torch.inference_mode():
        model(x)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            n += len(x)
    infer_rate = n / (time.perf_counter() - start)
    flops = count_flops(model, (channels, size, size, size))
    return {"size": size, "channels": channels, "train": train_rate, "infer": infer_rate, "mflop": flops / 1e6,
            "train_gflops": 3 * flops * train_rate / 1e9, "infer_gflops": flops * infer_rate / 1e9}


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per figure")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from fusion_model.config import EncoderConfig

    config = EncoderConfig()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; encoder width {config.width}, "
          f"depth {config.depth}, stem stride {config.stem_stride}, embedding {config.embedding_size}")
    matmul = matmul_gflops(args.seconds / 2)
    print(f"dense fp32 matmul 1024^2: {matmul:.1f} GFLOP/s")
    print(f"{'crop':>6} {'ch':>3} {'MFLOP/crop':>11} {'train crops/s':>14} {'GFLOP/s':>8} {'ratio':>6} "
          f"{'infer crops/s':>14} {'GFLOP/s':>8} {'ratio':>6}")
    results = []
    for size in (64, 28):
        for channels in (1, 2):
            r = measure(size, channels, args.batch, args.seconds, config)
            results.append(r)
            print(f"{size:>5}^3 {channels:>3} {r['mflop']:>11.0f} {r['train']:>14.1f} {r['train_gflops']:>8.1f} "
                  f"{r['train_gflops'] / matmul:>6.0%} {r['infer']:>14.1f} {r['infer_gflops']:>8.1f} "
                  f"{r['infer_gflops'] / matmul:>6.0%}")
    after = matmul_gflops(args.seconds / 2)  # the machine's speed again: a shared machine shows here
    main_setting = next(r for r in results if r["size"] == 64 and r["channels"] == 2)
    print(f"dense fp32 matmul again at the end: {after:.1f} GFLOP/s")
    print(f"64^3, 2 channels: inference {main_setting['infer_gflops'] / matmul:.0%} of the matmul (target >= 40%), "
          f"training {main_setting['train_gflops'] / matmul:.0%} (target >= 30%)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MB; targets at 64^3: train >= 40 crops/s, inference >= 150 crops/s "
          "(training counts forward + backward as 3x forward FLOPs; augmentation is included in its time)")


if __name__ == "__main__":
    main()
