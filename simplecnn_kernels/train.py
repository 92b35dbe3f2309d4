"""Train SimpleCNN or FusedSimpleCNN on CIFAR-10, or on built-in synthetic data.

    python -m simplecnn_kernels.train --model fused --epochs 5
    python -m simplecnn_kernels.train --data ~/data/cifar-10-batches-py --checkpoint run.pt
    python -m simplecnn_kernels.train --resume run.pt --model stock   # either model's checkpoint
    torchrun --nproc_per_node=2 -m simplecnn_kernels.train --model fused

CIFAR-10 is read from the folder its python archive unpacks to (cifar-10-batches-py:
data_batch_1..5 and test_batch, pickled dicts of uint8 rows). Without --data the run uses a
synthetic set: every class its own smooth random pattern, plus noise (learnable, not trivial).

Under torchrun each process trains a shard of every epoch with DistributedDataParallel (gloo on
the CPU, NCCL on GPUs); rank 0 prints and writes checkpoints.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from .models import FusedSimpleCNN, SimpleCNN

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
MODELS = {"stock": SimpleCNN, "fused": FusedSimpleCNN}


# --- data -------------------------------------------------------------------------------------


def load_cifar10(root: str | Path, train: bool = True) -> TensorDataset:
    """CIFAR-10 from `root` (the cifar-10-batches-py folder), normalized float32 images
    (N, 3, 32, 32) and int64 labels."""
    root = Path(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = root / name
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: --data must be the cifar-10-batches-py folder"
            )
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        # Each row: 1024 red, 1024 green, 1024 blue values, rows of the image in order.
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[b"labels"])
    x = torch.from_numpy(np.concatenate(images)).float().div_(255)
    return TensorDataset(_normalize(x), torch.tensor(labels, dtype=torch.int64))


def synthetic_cifar(n: int, seed: int = 0, shift: int = 8, noise: float = 5.0) -> TensorDataset:
    """`n` CIFAR-shaped images in 10 classes: each class a fixed smooth random pattern (from
    `seed`, the same in every call), shifted by up to `shift` pixels at random per image, plus
    Gaussian noise; per-image draws come from `seed + n`. Learnable, but over several epochs."""
    patterns = torch.randn(10, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    patterns = F.interpolate(patterns, size=(32, 32), mode="bilinear", align_corners=False)
    patterns /= patterns.std(dim=(1, 2, 3), keepdim=True)
    g = torch.Generator().manual_seed(seed + n)
    labels = torch.randint(10, (n,), generator=g)
    offsets = torch.randint(-shift, shift + 1, (n, 2), generator=g)
    images = torch.stack(
        [
            torch.roll(patterns[k], (int(dy), int(dx)), dims=(1, 2))
            for k, (dy, dx) in zip(labels, offsets, strict=True)
        ]
    )
    images += noise * torch.randn(n, 3, 32, 32, generator=g)
    return TensorDataset(images / (1 + noise**2) ** 0.5, labels)  # unit variance, as CIFAR


def _normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# --- training ---------------------------------------------------------------------------------


@dataclass
class History:
    """What a run measured: the loss of every step, and per epoch the averages."""

    step_losses: list[float] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m simplecnn_kernels.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", choices=list(MODELS), default="fused")
    p.add_argument("--data", type=Path, help="the cifar-10-batches-py folder (default: synthetic)")
    p.add_argument("--synthetic-size", type=int, default=20000, help="synthetic training images")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps", type=int, help="stop after this many steps in all")
    p.add_argument("--batch-size", type=int, default=256, help="per process")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", help="the fused op's backend (default: the best for the device)")
    p.add_argument("--checkpoint", type=Path, help="write a checkpoint here after every epoch")
    p.add_argument("--resume", type=Path, help="continue from this checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p.parse_args(argv)


def train(args: argparse.Namespace) -> History:
    device, rank, world = _join_process_group(torch.device(args.device))
    distributed = world > 1
    log = print if rank == 0 else (lambda *a, **k: None)

    model, optimizer, start_epoch = _model_and_optimizer(args, device)
    if args.resume is not None:
        log(f"resumed {args.resume} at epoch {start_epoch}")
    net = nn.parallel.DistributedDataParallel(model) if distributed else model

    train_set, test_set = _datasets(args)
    sampler = DistributedSampler(train_set, seed=args.seed) if distributed else None
    loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=torch.Generator().manual_seed(args.seed),
        drop_last=True,
    )
    log(
        f"{args.model}: {type(model).__name__} on {device} x{world}, "
        f"{len(train_set)} training images ({'CIFAR-10' if args.data else 'synthetic'})"
    )

    history = History()
    progress = Progress(sys.stderr, enabled=not args.quiet and rank == 0)
    for epoch in range(start_epoch, args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        progress.label = f"epoch {epoch + 1}/{args.epochs}"
        trained = _train_epoch(net, loader, optimizer, device, world, args, history, progress)
        test_loss, test_acc = evaluate(model, test_set, device, args.batch_size)
        record = {
            "epoch": epoch + 1,
            "train_loss": trained["train_loss"],
            "train_accuracy": trained["train_accuracy"],
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "images_per_s": trained["images_per_s"],
        }
        history.epochs.append(record)
        log(
            f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.3f} | test loss {test_loss:.4f} acc {test_acc:.3f} "
            f"| {record['images_per_s']:,.0f} images/s"
        )
        if args.checkpoint is not None and rank == 0:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
            }
            torch.save(state, args.checkpoint)
        if _step_limit_reached(args.max_steps, history):
            break
    if distributed:
        # Every rank done before any closes its connections (as torch's own distributed tests
        # do): a gloo rank tearing down while its peer still talked aborted it once here.
        dist.barrier()
        dist.destroy_process_group()
    return history


def _join_process_group(device: torch.device) -> tuple[torch.device, int, int]:
    """This process's device, rank and world size. Under torchrun (WORLD_SIZE > 1) it joins the
    process group (gloo on the CPU, NCCL on GPUs, one GPU per local rank); else rank 0 of 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, 0, 1
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, dist.get_rank(), dist.get_world_size()


def _model_and_optimizer(args: argparse.Namespace, device: torch.device):
    """The model, its optimizer and the epoch to start from: fresh (seeded: the same initial
    weights in every process and for both models), or as --resume's checkpoint left them."""
    torch.manual_seed(args.seed)
    kwargs = {"backend": args.backend} if args.model == "fused" else {}
    model = MODELS[args.model](device=device, **kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    if args.resume is None:
        return model, optimizer, 0
    state = torch.load(args.resume, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])  # SimpleCNN and FusedSimpleCNN share the keys
    optimizer.load_state_dict(state["optimizer"])
    return model, optimizer, state["epoch"]


def _datasets(args: argparse.Namespace) -> tuple[TensorDataset, TensorDataset]:
    """The training and test sets: CIFAR-10 from --data, else synthetic (a tenth for testing)."""
    if args.data is not None:
        return load_cifar10(args.data, True), load_cifar10(args.data, False)
    train_set = synthetic_cifar(args.synthetic_size, seed=args.seed)
    return train_set, synthetic_cifar(max(args.synthetic_size // 10, 1), seed=args.seed)


def _step_limit_reached(max_steps: int | None, history: History) -> bool:
    return max_steps is not None and len(history.step_losses) >= max_steps


def _train_epoch(net, loader, optimizer, device, world, args, history, progress) -> dict:
    """One epoch of SGD steps (fewer once the run has made --max-steps), each step's loss
    appended to `history`; returns the epoch's training loss, accuracy and speed (images per
    second over all `world` processes)."""
    net.train()
    seen, loss_sum, correct = 0, 0.0, 0
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if _step_limit_reached(args.max_steps, history):
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        history.step_losses.append(loss.item())
        seen += len(y)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        rate = seen * world / (time.perf_counter() - start)
        progress.step(f"step {i + 1}/{len(loader)} loss {loss.item():.4f} {rate:,.0f} images/s")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    progress.end_epoch()
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        "images_per_s": seen * world / elapsed,
    }


class Progress:
    """The training progress on `stream`. On a terminal one line, rewritten after every step
    (``\\r``); in a file or a CI log nothing per step, where rewritten lines would pile up: the
    epoch summaries report there."""

    def __init__(self, stream, enabled: bool = True):
        self.stream = stream
        self.live = enabled and stream.isatty()
        self.label = ""
        self._width = 0  # of the line on screen, which a shorter one must cover

    def step(self, status: str) -> None:
        if not self.live:
            return
        line = f"{self.label} {status}" if self.label else status
        print(f"\r{line.ljust(self._width)}", end="", file=self.stream, flush=True)
        self._width = len(line)

    def end_epoch(self) -> None:
        if self.live and self._width:
            print(file=self.stream, flush=True)
        self._width = 0


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, device, batch_size: int) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in DataLoader(data, batch_size=batch_size):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / len(data), correct / len(data)


def main(argv=None) -> History:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
