#!/usr/bin/env python3
"""PyTorch anchor for the paper's other backbones: one float train step (forward, cross-entropy,
backward, SGD momentum 0.9, weight decay 1e-4) of a model built by the authors' DeepShift fork's
own file (`pytorch/cifar10_models/`, fetched from its public repository lhennig0103/DeepShift),
on random 3x32x32 inputs (or --size), 10 classes.

Usage: torch_fork_step.py FORK_DIR ARCH [--threads N] [--steps N] [--batch N] [--size PX]
  FORK_DIR: the fork's checkout (the folder holding pytorch/); ARCH: a function of
  cifar10_models (mobilenetv2, efficientnetB0, vgg19, googlenet, ...).
Prints one JSON object: arch, parameters, ms per step, images/s (median of the timed steps).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fork")
    ap.add_argument("arch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=32)
    a = ap.parse_args()
    sys.path.insert(0, os.path.join(a.fork, "pytorch"))
    import cifar10_models  # noqa: E402  (the fork's package)

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = getattr(cifar10_models, a.arch)()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.randint(0, 10, (a.batch,))
    ts = []
    for k in range(a.steps + 2):
        t = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
        if k >= 2:
            ts.append(time.perf_counter() - t)
    med = statistics.median(ts)
    print(json.dumps({
        "arch": a.arch,
        "torch": torch.__version__,
        "threads": a.threads,
        "batch": a.batch,
        "size": a.size,
        "parameters": sum(p.numel() for p in m.parameters()),
        "ms_per_step": round(med * 1000, 1),
        "images_per_s": round(a.batch / med, 1),
    }))


if __name__ == "__main__":
    main()
