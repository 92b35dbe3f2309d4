"""The training command: data loading, convergence against the stock model, checkpoints,
DistributedDataParallel."""

import io
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import simplecnn_kernels as sk
from simplecnn_kernels.train import (
    CIFAR_MEAN,
    CIFAR_STD,
    Progress,
    load_cifar10,
    main,
    synthetic_cifar,
)


def write_tiny_cifar(root, per_batch=4, test=3, seed=0):
    """A cifar-10-batches-py folder in the dataset's own format: pickled dicts of bytes keys,
    `data` a uint8 (N, 3072) array (all red values, then green, then blue; rows in order)."""
    rng = np.random.default_rng(seed)
    root.mkdir()
    batches = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": test}
    for name, n in batches.items():
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    with open(root / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return root


def test_cifar_loader_reads_the_real_format(tmp_path):
    root = write_tiny_cifar(tmp_path / "cifar-10-batches-py")
    train, test = load_cifar10(root, train=True), load_cifar10(root, train=False)
    assert len(train) == 20 and len(test) == 3
    x, y = train.tensors
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    with open(root / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    i, c, row, col = 1, 2, 7, 30  # image 1 of batch 2 is image 5 overall
    raw = batch[b"data"][i][c * 1024 + row * 32 + col] / 255
    expected = (raw - CIFAR_MEAN[c]) / CIFAR_STD[c]
    assert x[4 + i, c, row, col].item() == pytest.approx(expected, abs=1e-6)
    assert y[4 + i].item() == batch[b"labels"][i]


def test_cifar_loader_names_a_wrong_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)


def test_synthetic_data_is_learnable_and_reproducible():
    a, b = synthetic_cifar(256, seed=3), synthetic_cifar(256, seed=3)
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    x, y = a.tensors
    assert x.shape == (256, 3, 32, 32) and set(y.tolist()) == set(range(10))
    assert 0.8 < x.std().item() < 1.2


def test_train_on_cifar_files_with_checkpoint_and_resume_across_models(tmp_path):
    root = write_tiny_cifar(tmp_path / "cifar-10-batches-py", per_batch=16, test=8)
    ckpt = tmp_path / "run.pt"
    common = ["--data", str(root), "--batch-size", "16", "--quiet", "--checkpoint", str(ckpt)]
    first = main([*common, "--model", "fused", "--epochs", "1"])
    assert len(first.epochs) == 1 and len(first.step_losses) == 5  # 80 images / 16
    record = first.epochs[0]
    assert record["images_per_s"] > 0 and 0 <= record["test_accuracy"] <= 1
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1 and set(state["model"]) == set(sk.SimpleCNN().state_dict())
    # The stock model resumes from the fused model's checkpoint.
    second = main([*common, "--model", "stock", "--epochs", "2", "--resume", str(ckpt)])
    assert [r["epoch"] for r in second.epochs] == [2]


def test_loss_curves_of_both_models_agree():
    # Same seed, same data: the fused model follows the stock one step for step.
    args = ["--max-steps", "20", "--synthetic-size", "2048", "--batch-size", "64", "--quiet"]
    stock = main(["--model", "stock", *args]).step_losses
    fused = main(["--model", "fused", *args]).step_losses
    assert len(stock) == len(fused) == 20
    assert stock[0] != stock[-1]  # training moved
    np.testing.assert_allclose(fused, stock, rtol=1e-4)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_rewrites_one_line_on_a_terminal():
    terminal = _Terminal()
    progress = Progress(terminal)
    progress.label = "epoch 1/2"
    progress.step("step 1/2 1,000 images/s")
    progress.step("step 2/2 999 images/s")  # shorter: blanks cover the rest of the last line
    progress.end_epoch()
    assert terminal.getvalue() == (
        "\repoch 1/2 step 1/2 1,000 images/s\repoch 1/2 step 2/2 999 images/s  \n"
    )


def test_progress_in_a_log_is_one_line_per_epoch(capsys):
    # capsys's streams are no terminal, as a file or a CI log: no rewritten lines pile up there.
    main(["--epochs", "2", "--synthetic-size", "256", "--batch-size", "64"])
    out, err = capsys.readouterr()
    assert "\r" not in out + err
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("epoch")] == [
        "epoch 1",
        "epoch 2",
    ]
    assert err == ""


def _ddp_worker(rank, world, init_file, x, y, out_file):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(sk.FusedSimpleCNN())
    shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    F.cross_entropy(model(x[shard]), y[shard]).backward()
    if rank == 0:
        torch.save({k: p.grad for k, p in model.module.named_parameters()}, out_file)
    torch.distributed.destroy_process_group()


def test_ddp_gradients_equal_single_process(tmp_path):
    x, y = torch.randn(16, 3, 32, 32), torch.randint(10, (16,))
    torch.multiprocessing.spawn(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), x, y, str(tmp_path / "grads.pt")),
        nprocs=2,
    )
    ddp_grads = torch.load(tmp_path / "grads.pt", weights_only=True)
    torch.manual_seed(0)
    model = sk.FusedSimpleCNN()
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ddp_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("torchrun") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="torchrun missing",
)
def test_torchrun_two_processes():
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run(
        [torchrun, "--nproc_per_node=2", "-m", "simplecnn_kernels.train", "--max-steps", "3",
         "--synthetic-size", "512", "--batch-size", "32", "--quiet", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x2" in result.stdout and "epoch 1:" in result.stdout
