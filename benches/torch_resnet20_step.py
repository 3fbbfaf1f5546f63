#!/usr/bin/env python3
"""PyTorch anchor for benches/gpu.sh: one ResNet20 train step (He et al., option-A shortcuts, the
network dsnn-hpo builds) at batch 128 on 3x32x32, SGD momentum 0.9, weight decay 1e-4, on any
device torch has. The same network and step as ../shared/perf/torch_resnet20_step.py, with a device.

Usage: torch_resnet20_step.py [--device cuda|cuda:N|cpu] [--threads N] [--steps N] [--batch N]
Prints one JSON object: device, torch version, ms per step and images/s (median of the timed steps).
"""
import argparse
import json
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print(json.dumps({"skipped": "torch is not installed for " + sys.executable}))
    sys.exit(0)


class Block(nn.Module):
    def __init__(self, i, o, s):
        super().__init__()
        self.c1 = nn.Conv2d(i, o, 3, s, 1, bias=False)
        self.b1 = nn.BatchNorm2d(o)
        self.c2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(o)
        self.pad = s != 1 or i != o
        self.i, self.o = i, o

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        sc = x
        if self.pad:
            p = (self.o - self.i) // 2
            sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))
        return F.relu(y + sc)


class ResNet20(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.c = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.b = nn.BatchNorm2d(16)
        layers, i = [], 16
        for o, s in ((16, 1), (32, 2), (64, 2)):
            for k in range(n):
                layers.append(Block(i, o, s if k == 0 else 1))
                i = o
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.b(self.c(x)))
        x = self.layers(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": f"torch {torch.__version__} sees no CUDA device"}))
        return
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = ResNet20().to(dev)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(a.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    ts = []
    for k in range(a.steps + 3):
        sync()
        t = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        sync()
        if k >= 3:
            ts.append(time.perf_counter() - t)
    med = statistics.median(ts)
    print(json.dumps({
        "device": str(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": a.batch,
        "ms_per_step": round(med * 1000, 3),
        "images_per_s": round(a.batch / med, 1),
        "steps": a.steps,
    }))


if __name__ == "__main__":
    main()
