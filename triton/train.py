"""Train and export the reference ``lesion_detector`` model on synthetic phantoms.

This is a synthetic-data reference model for exercising the pipeline end to end; it is not a clinical
model and has never seen a real patient image.

The script generates CT-slice-like phantoms (a body ellipse, a few organs, smooth texture and noise),
half of them with one small round lesion of varying size, contrast and position, trains a small CNN on
CPU with fixed seeds, measures AUC and accuracy on a separately seeded held-out set, and exports ONNX with
a dynamic batch dimension.

The network sees what the runtime preprocessing produces (see ``spec.json``): a 128x128 image windowed to
0..1 and normalised with ``(x - 0.5) / 0.25``. It returns

* ``probability`` [N, 1]: lesion probability 0..1;
* ``heatmap`` [N, 1, 32, 32]: coarse lesion localisation 0..1 (one cell covers 4x4 input pixels).

Run (about 5 minutes on 2 cores)::

    python3.11 -m venv .venv-train
    .venv-train/bin/pip install torch==2.13.0 numpy onnx
    .venv-train/bin/python triton/train.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent


def _load_phantoms() -> ModuleType:
    """Load the phantom generator (numpy only) by path: putting the project root on sys.path would make
    this ``triton/`` folder shadow the ``triton`` package that torch probes for."""
    path = HERE.parent / "loadtest" / "phantoms.py"
    spec = importlib.util.spec_from_file_location("radstream_phantoms", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


phantoms = _load_phantoms()
IMAGE_SIZE: int = phantoms.IMAGE_SIZE
HEATMAP_SIZE: int = phantoms.HEATMAP_SIZE
NORM_MEAN = 0.5
NORM_STD = 0.25
DEFAULT_OUTPUT = HERE / "models" / "lesion_detector" / "1" / "model.onnx"


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.float32)
    rng.shuffle(labels)
    images = np.empty((n, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    heats = np.empty((n, 1, HEATMAP_SIZE, HEATMAP_SIZE), dtype=np.float32)
    for i in range(n):
        phantom = phantoms.make_phantom(rng, bool(labels[i]))
        images[i, 0], heats[i, 0] = phantoms.window(phantom.hu), phantom.heat
    return (images - NORM_MEAN) / NORM_STD, heats, labels


# ------------------------------------------------------------------------------------------------ model
def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class LesionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(1, 16, stride=2),  # 64x64
            _block(16, 16),
            _block(16, 32, stride=2),  # 32x32
            _block(32, 32),
            _block(32, 32, dilation=2),
            _block(32, 32, dilation=4),
        )
        self.heat = nn.Conv2d(32, 1, 1)
        self.cls = nn.Linear(32 + 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        heat_logit = self.heat(f)
        peak = torch.amax(heat_logit, dim=(2, 3))
        pooled = torch.mean(f, dim=(2, 3))
        prob_logit = self.cls(torch.cat([pooled, peak], dim=1))
        return prob_logit, heat_logit


class Exported(nn.Module):
    """The exported graph: sigmoid outputs with the names the spec declares."""

    def __init__(self, net: LesionNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prob_logit, heat_logit = self.net(image)
        return torch.sigmoid(prob_logit), torch.sigmoid(heat_logit)


# --------------------------------------------------------------------------------------------- metrics
def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def evaluate(net: LesionNet, images: np.ndarray, heats: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    net.eval()
    probs, peaks_ok = [], []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            x = torch.from_numpy(images[start : start + 256])
            prob_logit, heat_logit = net(x)
            probs.append(torch.sigmoid(prob_logit)[:, 0].numpy())
            pred = heat_logit.flatten(1).argmax(1).numpy()
            true = torch.from_numpy(heats[start : start + 256]).flatten(1).argmax(1).numpy()
            dy = pred // HEATMAP_SIZE - true // HEATMAP_SIZE
            dx = pred % HEATMAP_SIZE - true % HEATMAP_SIZE
            peaks_ok.append(np.hypot(dy, dx) <= 2.0)  # within 2 cells = 8 input pixels
    p = np.concatenate(probs)
    ok = np.concatenate(peaks_ok)
    pos = labels == 1
    return {
        "auc": roc_auc(p, labels),
        "accuracy": float(((p >= 0.5) == pos).mean()),
        "sensitivity": float((p[pos] >= 0.5).mean()),
        "specificity": float((p[~pos] < 0.5).mean()),
        "localisation_within_8px": float(ok[pos].mean()),
    }


# ---------------------------------------------------------------------------------------------- main
def train(args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    x_train, h_train, y_train = make_dataset(args.train, seed=args.seed)
    x_test, h_test, y_test = make_dataset(args.test, seed=args.seed + 1000)
    print(f"generated {args.train} training and {args.test} held-out phantoms in {time.monotonic() - t0:.0f}s")

    net = LesionNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * (args.train // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(args.train, generator=gen)
        total = 0.0
        for b in range(args.train // args.batch):
            idx = perm[b * args.batch : (b + 1) * args.batch]
            x = torch.from_numpy(x_train[idx.numpy()])
            if torch.rand((), generator=gen) < 0.5:  # flips keep the task but vary the anatomy
                x = torch.flip(x, dims=[3])
                h = torch.flip(torch.from_numpy(h_train[idx.numpy()]), dims=[3])
            else:
                h = torch.from_numpy(h_train[idx.numpy()])
            y = torch.from_numpy(y_train[idx.numpy()])[:, None]
            prob_logit, heat_logit = net(x)
            loss = F.binary_cross_entropy_with_logits(prob_logit, y) + F.binary_cross_entropy_with_logits(
                heat_logit, h, pos_weight=torch.tensor(20.0)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        metrics = evaluate(net, x_test, h_test, y_test)
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {total / (args.train // args.batch):.4f} "
            f"held-out auc {metrics['auc']:.4f} acc {metrics['accuracy']:.4f} "
            f"({time.monotonic() - t0:.0f}s)"
        )
    metrics = evaluate(net, x_test, h_test, y_test)
    export(net, args.output)
    return {
        "train_images": args.train,
        "heldout_images": args.test,
        "epochs": args.epochs,
        "seed": args.seed,
        "threads": args.threads,
        "seconds": round(time.monotonic() - t0, 1),
        "torch": torch.__version__,
        "onnx_bytes": args.output.stat().st_size,
        **{k: round(v, 4) for k, v in metrics.items()},
    }


def export(net: LesionNet, output: Path) -> None:
    net.eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    model = Exported(net)
    example = torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    torch.onnx.export(
        model,
        (example,),
        str(output),
        input_names=["image"],
        output_names=["probability", "heatmap"],
        dynamic_axes={"image": {0: "batch"}, "probability": {0: "batch"}, "heatmap": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--metrics", type=Path, default=HERE / "models" / "lesion_detector" / "metrics.json")
    args = parser.parse_args()
    result = train(args)
    args.metrics.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
