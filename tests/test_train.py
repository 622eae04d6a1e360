"""Behaviour of adlib.training.train.fit: learning, exact resume, checkpoints, early stopping, logging."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from adlib.training import train as train_module
from adlib.training.train import (
    CheckpointMismatchError,
    epoch_seed,
    fit,
    load_checkpoint,
    model_signature,
    pick_device,
    seed_everything,
)


class DropoutMLP(nn.Module):
    """Tiny regressor with dropout, so the global torch RNG shapes every update."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Scalar(nn.Module):
    """One parameter w: losses (w - target)^2 make val curves easy to construct."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))


def regression_data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.linspace(-1, 1, 8).unsqueeze(1) + 0.5
    return TensorDataset(x, y)


def mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(model(x), y)


def build_model(init_seed: int = 0, hidden: int = 16) -> DropoutMLP:
    torch.manual_seed(init_seed)
    return DropoutMLP(hidden)


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


COMMON = dict(lr=1e-2, device="cpu", seed=3, progress=False)


# --------------------------------------------------------------------------- basics


def test_fit_reduces_loss_and_history_has_one_row_per_epoch():
    data = regression_data(128)
    result = fit(
        build_model(),
        mse,
        data,
        epochs=8,
        batch_size=16,
        val_data=regression_data(32, seed=1),
        **COMMON,
    )
    h = result.history
    assert list(h.columns) == ["epoch", "train_loss", "val_loss", "lr", "seconds"]
    assert h["epoch"].tolist() == list(range(1, 9))
    assert h["train_loss"].iloc[-1] < 0.3 * h["train_loss"].iloc[0]
    assert h["val_loss"].iloc[-1] < 0.3 * h["val_loss"].iloc[0]
    assert (h["seconds"] > 0).all() and (h["lr"] == 1e-2).all()
    assert result.model.training is False  # handed over ready for scoring
    assert result.device == "cpu" and result.precision == "fp32"  # amp=True is a no-op off CUDA
    assert result.resumed_from is None and result.checkpoint_path is None


def test_same_seed_same_weights_other_seed_other_weights():
    data = regression_data()
    a = fit(build_model(), mse, data, epochs=2, batch_size=8, **COMMON).model
    b = fit(build_model(), mse, data, epochs=2, batch_size=8, **COMMON).model
    c = fit(build_model(), mse, data, epochs=2, batch_size=8, **{**COMMON, "seed": 4}).model
    assert state_equal(a, b)
    assert not state_equal(a, c)


def test_dict_losses_log_extra_columns():
    def loss_fn(model, batch):
        x, y = batch
        pred = model(x)
        l1 = (pred - y).abs().mean()
        l2 = ((pred - y) ** 2).mean()
        return {"loss": l1 + 0.5 * l2, "l1": l1, "l2": l2}

    h = fit(
        build_model(),
        loss_fn,
        regression_data(),
        epochs=2,
        batch_size=16,
        val_data=regression_data(16, 1),
        **COMMON,
    ).history
    assert list(h.columns) == [
        "epoch",
        "train_loss",
        "train_l1",
        "train_l2",
        "val_loss",
        "val_l1",
        "val_l2",
        "lr",
        "seconds",
    ]
    np.testing.assert_allclose(h["train_loss"], h["train_l1"] + 0.5 * h["train_l2"], rtol=1e-5)
    np.testing.assert_allclose(h["val_loss"], h["val_l1"] + 0.5 * h["val_l2"], rtol=1e-5)


def test_progress_false_prints_nothing_and_progress_text_shows_a_bar(capsys, tmp_path):
    fit(
        build_model(),
        mse,
        regression_data(),
        epochs=2,
        batch_size=16,
        checkpoint_dir=tmp_path,
        **COMMON,
    )
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    fit(
        build_model(),
        mse,
        regression_data(),
        epochs=2,
        batch_size=16,
        **{**COMMON, "progress": "text"},
        desc="svdd",
    )
    err = capsys.readouterr().err
    assert "svdd" in err and "8/8" in err and "epoch 2/2" in err


def test_scheduler_is_stepped_per_epoch_and_logged():
    sched = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # noqa: E731
    h = fit(
        build_model(), mse, regression_data(), epochs=3, batch_size=16, scheduler=sched, **COMMON
    ).history
    np.testing.assert_allclose(h["lr"], [1e-2, 5e-3, 2.5e-3])


def test_grad_clip_bounds_each_update():
    model = Scalar()
    batches = [torch.tensor([100.0])]  # gradient 2 * (0 - 100) = -200 without clipping
    fit(
        model,
        lambda m, t: ((m.w - t) ** 2).mean(),
        batches,
        epochs=1,
        optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
        grad_clip=0.01,
        device="cpu",
        progress=False,
    )
    assert model.w.item() == pytest.approx(0.01, abs=1e-6)


def test_loss_fn_must_return_a_scalar_or_a_dict_with_loss():
    with pytest.raises(ValueError, match="'loss'"):
        fit(
            build_model(),
            lambda m, b: {"l1": mse(m, b)},
            regression_data(),
            epochs=1,
            batch_size=16,
            **COMMON,
        )
    with pytest.raises(ValueError, match="scalar"):
        fit(
            build_model(),
            lambda m, b: (m(b[0]) - b[1]) ** 2,
            regression_data(),
            epochs=1,
            batch_size=16,
            **COMMON,
        )


def test_dataset_needs_batch_size_and_one_shot_iterators_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        fit(build_model(), mse, regression_data(), epochs=1, **COMMON)
    with pytest.raises(TypeError, match="one-shot"):
        fit(
            build_model(),
            mse,
            iter(DataLoader(regression_data(), batch_size=8)),
            epochs=1,
            **COMMON,
        )


def test_callable_train_data_gets_the_epoch_number():
    seen = []

    def batches(epoch):
        seen.append(epoch)
        g = torch.Generator().manual_seed(epoch_seed(0, epoch))
        x = torch.randn(16, 8, generator=g)
        return [(x, x.sum(1, keepdim=True))]

    fit(build_model(), mse, batches, epochs=3, **COMMON)
    assert seen == [1, 2, 3]


# --------------------------------------------------------------------------- resume


def crash_at(loss_fn, epoch: int, batch: int, batches_per_epoch: int):
    """Wrap loss_fn so that the given training batch (1-based) raises, like a killed job."""
    calls = {"train": 0}
    target = (epoch - 1) * batches_per_epoch + batch

    def wrapped(model, b):
        if model.training:
            calls["train"] += 1
            if calls["train"] == target:
                raise RuntimeError("simulated crash")
        return loss_fn(model, b)

    return wrapped


def loader_kinds():
    """train_data as a Dataset, a DataLoader on the global RNG, one with its own generator."""
    data = regression_data(64)
    return {
        "dataset": dict(train_data=data, batch_size=8),
        "dataloader": dict(train_data=DataLoader(data, batch_size=8, shuffle=True)),
        "dataloader_generator": dict(
            train_data=DataLoader(
                data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(7)
            )
        ),
    }


def resumable_kwargs(tmp_path, name):
    # LambdaLR computes the lr from its epoch count, so a scheduler that is not restored shows.
    sched = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.8**e)  # noqa: E731
    return dict(
        epochs=6,
        val_data=regression_data(16, 1),
        scheduler=sched,
        checkpoint_dir=tmp_path / name,
        **COMMON,
    )


@pytest.mark.parametrize("kind", ["dataset", "dataloader", "dataloader_generator"])
def test_crash_mid_epoch_then_rerun_gives_bitwise_the_uninterrupted_weights(tmp_path, kind):
    full = fit(
        build_model(),
        mse,
        restore_best=False,
        **loader_kinds()[kind],
        **resumable_kwargs(tmp_path, "a"),
    )

    kwargs = resumable_kwargs(tmp_path, "b")
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(
            build_model(),
            crash_at(mse, epoch=3, batch=2, batches_per_epoch=8),
            restore_best=False,
            **loader_kinds()[kind],
            **kwargs,
        )
    # A fresh process: new model (other init), new loader objects.
    resumed = fit(
        build_model(init_seed=99), mse, restore_best=False, **loader_kinds()[kind], **kwargs
    )

    assert resumed.resumed_from == 2
    assert state_equal(full.model, resumed.model)
    cols = ["epoch", "train_loss", "val_loss", "lr"]
    assert resumed.history[cols].equals(full.history[cols])


def test_resume_without_rng_restore_would_differ(tmp_path, monkeypatch):
    """Control: the exactness above depends on the RNG states (dropout draws from torch's RNG)."""
    full = fit(
        build_model(),
        mse,
        regression_data(),
        epochs=4,
        batch_size=8,
        checkpoint_dir=tmp_path / "a",
        **COMMON,
    )
    fit(
        build_model(),
        mse,
        regression_data(),
        epochs=2,
        batch_size=8,
        checkpoint_dir=tmp_path / "b",
        **COMMON,
    )
    monkeypatch.setattr(train_module, "restore_rng", lambda state, generators=(): None)
    resumed = fit(
        build_model(),
        mse,
        regression_data(),
        epochs=4,
        batch_size=8,
        checkpoint_dir=tmp_path / "b",
        **COMMON,
    )
    assert resumed.resumed_from == 2
    assert not state_equal(full.model, resumed.model)


def test_training_in_two_calls_equals_one_call(tmp_path):
    kwargs = resumable_kwargs(tmp_path, "a")
    full = fit(build_model(), mse, regression_data(), batch_size=8, **kwargs)
    kwargs = resumable_kwargs(tmp_path, "b")
    first = fit(build_model(), mse, regression_data(), batch_size=8, **{**kwargs, "epochs": 3})
    assert len(first.history) == 3
    second = fit(build_model(init_seed=5), mse, regression_data(), batch_size=8, **kwargs)
    assert second.resumed_from == 3
    assert second.best_epoch == full.best_epoch
    assert state_equal(full.model, second.model)  # both hold the best-validation weights
    assert second.history[["train_loss", "val_loss"]].equals(
        full.history[["train_loss", "val_loss"]]
    )


def test_extra_state_modules_and_optimisers_resume_exactly(tmp_path):
    """LEA-Net-style: a second network trained with its own optimiser inside loss_fn."""

    def run(ckpt_dir, crash):
        model, aux = build_model(), build_model(init_seed=1)
        aux_opt = torch.optim.Adam(aux.parameters(), lr=1e-2)

        def loss_fn(m, batch):
            x, y = batch
            if m.training:
                aux_opt.zero_grad()
                F.mse_loss(aux(x), y).backward()
                aux_opt.step()
            return F.mse_loss(m(x) + 0.1 * aux(x).detach(), y)

        loss = crash_at(loss_fn, 2, 3, 8) if crash else loss_fn
        return fit(
            model,
            loss,
            regression_data(),
            epochs=3,
            batch_size=8,
            checkpoint_dir=ckpt_dir,
            extra_state={"aux": aux, "aux_opt": aux_opt},
            **COMMON,
        ), aux

    full, aux_full = run(tmp_path / "a", crash=False)
    with pytest.raises(RuntimeError):
        run(tmp_path / "b", crash=True)
    resumed, aux_resumed = run(tmp_path / "b", crash=False)
    assert resumed.resumed_from == 1
    assert state_equal(full.model, resumed.model)
    assert state_equal(aux_full, aux_resumed)


def test_finished_run_returns_at_once_with_the_stored_history(tmp_path):
    kwargs = dict(
        epochs=3, batch_size=16, val_data=regression_data(16, 1), checkpoint_dir=tmp_path, **COMMON
    )
    first = fit(build_model(), mse, regression_data(), **kwargs)
    calls = []
    again = fit(
        build_model(init_seed=9),
        lambda m, b: calls.append(1) or mse(m, b),
        regression_data(),
        **kwargs,
    )
    assert calls == []
    assert again.resumed_from == 3 and again.best_epoch == first.best_epoch
    assert again.history.equals(first.history)
    assert state_equal(first.model, again.model)


def test_resume_refuses_other_settings_and_shorter_runs(tmp_path):
    fit(
        build_model(),
        mse,
        regression_data(),
        epochs=2,
        batch_size=16,
        checkpoint_dir=tmp_path,
        **COMMON,
    )
    with pytest.raises(CheckpointMismatchError, match="seed"):
        fit(
            build_model(),
            mse,
            regression_data(),
            epochs=3,
            batch_size=16,
            checkpoint_dir=tmp_path,
            **{**COMMON, "seed": 8},
        )
    with pytest.raises(CheckpointMismatchError, match="epochs=1"):
        fit(
            build_model(),
            mse,
            regression_data(),
            epochs=1,
            batch_size=16,
            checkpoint_dir=tmp_path,
            **COMMON,
        )


# --------------------------------------------------------------------------- checkpoint files


def test_checkpoints_load_weights_only_and_leave_no_temp_files(tmp_path):
    result = fit(
        build_model(),
        mse,
        regression_data(),
        epochs=3,
        batch_size=16,
        val_data=regression_data(16, 1),
        checkpoint_dir=tmp_path,
        checkpoint_every=2,
        **COMMON,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert last["epoch"] == 3 and last["history"]["epoch"] == [1, 2, 3]
    assert best["epoch"] == result.best_epoch
    assert last["model_signature"]["hash"] == model_signature(result.model)["hash"]

    fresh = build_model(init_seed=42)
    info = load_checkpoint(tmp_path / "best.pt", fresh)
    assert info["val_loss"] == pytest.approx(result.history["val_loss"].min())
    assert state_equal(fresh, result.model)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    fit(
        build_model(),
        mse,
        regression_data(),
        epochs=2,
        batch_size=16,
        checkpoint_dir=tmp_path,
        **COMMON,
    )
    real_save = torch.save

    def torn_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(train_module.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        fit(
            build_model(),
            mse,
            regression_data(),
            epochs=4,
            batch_size=16,
            checkpoint_dir=tmp_path,
            **COMMON,
        )
    monkeypatch.setattr(train_module.torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 2


def test_checkpoint_of_another_architecture_is_refused_with_a_fix(tmp_path):
    fit(
        build_model(hidden=16),
        mse,
        regression_data(),
        epochs=1,
        batch_size=16,
        checkpoint_dir=tmp_path,
        **COMMON,
    )
    other = build_model(hidden=32)
    with pytest.raises(CheckpointMismatchError) as err:
        fit(
            other,
            mse,
            regression_data(),
            epochs=2,
            batch_size=16,
            checkpoint_dir=tmp_path,
            **COMMON,
        )
    text = str(err.value)
    assert (
        "DropoutMLP" in text and "net.0.weight" in text and "[16, 8]" in text and "[32, 8]" in text
    )
    assert "resume=False" in text and "checkpoint_dir" in text
    with pytest.raises(CheckpointMismatchError, match="Scalar"):
        load_checkpoint(tmp_path / "last.pt", Scalar())
    # resume=False starts over (and overwrites).
    fresh = fit(
        other,
        mse,
        regression_data(),
        epochs=1,
        batch_size=16,
        checkpoint_dir=tmp_path,
        resume=False,
        **COMMON,
    )
    assert fresh.resumed_from is None
    load_checkpoint(tmp_path / "last.pt", build_model(hidden=32))


# --------------------------------------------------------------------------- early stopping


def test_early_stopping_on_validation_restores_the_best_weights(tmp_path):
    # Training pulls w from 0 toward 5 (w_t = 5 - 5 * 0.9^t); validation wants w = 1, so the
    # validation loss falls until w passes 1 (epoch 2, w = 0.95) and rises after.
    model = Scalar()
    loss_fn = lambda m, target: ((m.w - target) ** 2).mean()  # noqa: E731
    result = fit(
        model,
        loss_fn,
        [torch.tensor([5.0])],
        val_data=[torch.tensor([1.0])],
        epochs=50,
        patience=3,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        device="cpu",
        progress=False,
        checkpoint_dir=tmp_path,
    )
    assert result.stopped_early
    assert result.best_epoch == 2
    assert len(result.history) == 2 + 3
    assert result.model.w.item() == pytest.approx(0.95, abs=1e-6)
    assert result.best_val_loss == pytest.approx(result.history["val_loss"].min())
    assert torch.load(tmp_path / "best.pt", weights_only=True)["model"][
        "w"
    ].item() == pytest.approx(0.95, abs=1e-6)
    # An early-stopped run is finished: rerunning returns it as it was.
    again = fit(
        Scalar(),
        loss_fn,
        [torch.tensor([5.0])],
        val_data=[torch.tensor([1.0])],
        epochs=50,
        patience=3,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        device="cpu",
        progress=False,
        checkpoint_dir=tmp_path,
    )
    assert (
        again.stopped_early
        and again.model.w.item() == pytest.approx(0.95, abs=1e-6)
        and len(again.history) == 5
    )


def test_patience_needs_validation_and_test_splits_are_refused():
    with pytest.raises(ValueError, match="val_data"):
        fit(build_model(), mse, regression_data(), epochs=2, batch_size=16, patience=2, **COMMON)

    class TestSplit(TensorDataset):
        split = "test"

    test_split = TestSplit(*regression_data(16).tensors)
    for val in (test_split, Subset(test_split, [0, 1]), DataLoader(test_split, batch_size=4)):
        with pytest.raises(ValueError, match="test split"):
            fit(
                build_model(),
                mse,
                regression_data(),
                epochs=1,
                batch_size=16,
                val_data=val,
                **COMMON,
            )


# --------------------------------------------------------------------------- device, seeds


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="not a device name"):
        pick_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_pick_device_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA is not available.*device='auto'"):
        pick_device("cuda")


def test_seed_everything_seeds_python_numpy_and_torch():
    def draw():
        return random.random(), np.random.rand(), torch.rand(()).item()

    seed_everything(5)
    first = draw()
    seed_everything(5)
    assert draw() == first
    seed_everything(6)
    assert draw() != first
    with pytest.raises(ValueError, match="non-negative"):
        seed_everything(-1)


# --------------------------------------------------------------------------- workers, batches


class NoisyData(torch.utils.data.Dataset):
    """Augments with NumPy's global RNG, as many transforms do: needs seeded workers."""

    def __init__(self) -> None:
        self.base = regression_data(32)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x + torch.from_numpy(np.random.normal(0, 0.1, 8).astype(np.float32)), y


def test_worker_augmentations_are_seeded_and_resume_exactly(tmp_path):
    kwargs = dict(epochs=3, batch_size=8, num_workers=1, **COMMON)
    full = fit(build_model(), mse, NoisyData(), checkpoint_dir=tmp_path / "a", **kwargs)
    with pytest.raises(RuntimeError):
        fit(
            build_model(),
            crash_at(mse, 3, 1, 4),
            NoisyData(),
            checkpoint_dir=tmp_path / "b",
            **kwargs,
        )
    resumed = fit(build_model(), mse, NoisyData(), checkpoint_dir=tmp_path / "b", **kwargs)
    assert resumed.resumed_from == 2
    assert state_equal(full.model, resumed.model)
    other_seed = fit(build_model(), mse, NoisyData(), **{**kwargs, "seed": 11})
    assert not state_equal(full.model, other_seed.model)


class NumpyNoise(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        return torch.tensor(np.random.normal(), dtype=torch.float32)


def test_workers_draw_fresh_numpy_noise_each_epoch_and_the_same_each_run():
    """Worker NumPy streams come from the per-epoch loader seed: new each epoch, same each run."""

    def run():
        drawn = []

        def loss_fn(model, batch):
            drawn.append(batch.clone())
            return ((model.w - batch) ** 2).mean()

        fit(Scalar(), loss_fn, NumpyNoise(), epochs=2, batch_size=8, num_workers=1, **COMMON)
        return drawn

    first, again = run(), run()
    assert not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, again))


class DictImages(torch.utils.data.Dataset):
    """Items shaped like adlib's data set contract (image, label, mask, defect_type, path)."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        image = torch.rand(3, 8, 8, generator=g)
        return {"image": image, "label": 0, "mask": torch.zeros(8, 8), "defect_type": "good",
                "path": f"img_{i}.png"}  # fmt: skip


def test_dict_batches_reach_loss_fn_with_tensors_on_the_device_and_strings_intact():
    seen = []
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))

    def reconstruction(model, batch):
        seen.append(
            (batch["path"], batch["image"].is_contiguous(memory_format=torch.channels_last))
        )
        return F.mse_loss(model(batch["image"]), batch["image"])

    result = fit(conv, reconstruction, DictImages(), epochs=3, batch_size=4, channels_last=True,
                 **{**COMMON, "lr": 3e-2})  # fmt: skip
    assert len(seen) == 9 and all(isinstance(p, list) and p[0].endswith(".png") for p, _ in seen)
    assert all(cl for _, cl in seen)
    assert result.history["train_loss"].iloc[-1] < result.history["train_loss"].iloc[0]
