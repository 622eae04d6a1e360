"""The one training loop of the book: device, seed, AMP, progress, checkpoints, resume, early stop.

Every paper's notebook trains through :func:`fit`; the paper-specific part is a
``loss_fn(model, batch)`` that returns the loss (or a dict of loss terms). What ``fit`` adds,
and why each piece is there:

* **Reproducible.** :func:`seed_everything` seeds Python, NumPy and torch; the shuffling of a
  data set that ``fit`` wraps in a DataLoader comes from a generator re-seeded from
  ``(seed, epoch)`` at each epoch (:func:`epoch_seed`), so batch order never depends on what
  ran before.
* **Resumable, exactly.** Every ``checkpoint_every`` epochs ``checkpoint_dir/last.pt`` receives
  the model, optimiser, scheduler, AMP scaler, ``extra_state``, every RNG state and the history.
  A run killed mid-epoch and started again with the same arguments ends with the same weights,
  bit for bit on a CPU, as a run never interrupted (``tests/test_train.py`` checks this).
* **Safe to load.** Checkpoints hold only tensors and plain Python values, so
  ``torch.load(path, weights_only=True)`` reads them; they are written atomically (temp file +
  ``os.replace``) so a crash during a save never leaves a torn ``last.pt``; and they carry the
  model's signature, so resuming a different architecture's run fails loudly
  (:class:`CheckpointMismatchError`) instead of silently mixing two experiments. The
  checkpoint code lives in :mod:`adlib.training.checkpoint`.
* **Honest model selection.** Early stopping and "best weights" use the *validation* loss only;
  there is no parameter for the test split, and a data set whose ``split`` is ``"test"`` is
  refused as ``val_data``.
* **Fast on a GPU.** Losses are summed on the device and read back once per epoch (no per-batch
  host sync); AMP (fp16 + GradScaler, or bf16) on CUDA; pinned memory; optional channels-last.

Typical use in a notebook::

    result = fit(model, loss_fn, train_set, val_data=val_set, epochs=cfg.epochs,
                 batch_size=cfg.batch_size, device=cfg.device, seed=cfg.seed,
                 checkpoint_dir=Path(cfg.output_dir) / "checkpoints")
    result.history.plot(x="epoch", y=["train_loss", "val_loss"])

Explained in the book's introduction, section "Training".
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm import tqdm

from adlib.training.checkpoint import (
    BEST_CHECKPOINT,
    CHECKPOINT_FORMAT,
    LAST_CHECKPOINT,
    CheckpointMismatchError,
    check_resumable,
    load_checkpoint,
    loader_generators,
    model_signature,
    mps_available,
    plain,
    read_checkpoint,
    restore_rng,
    restore_run,
    run_checkpoint,
    run_settings,
    save_atomic,
)
from adlib.training.progress import progress as live_progress

__all__ = [
    "CheckpointMismatchError",
    "FitResult",
    "epoch_seed",
    "fit",
    "load_checkpoint",
    "model_signature",
    "pick_device",
    "seed_everything",
    "seed_worker",
]

LossFn = Callable[[nn.Module, Any], Union[torch.Tensor, Mapping[str, torch.Tensor]]]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``model`` holds the weights of ``best_epoch``: the epoch with the lowest validation loss
    when ``val_data`` was given (and ``restore_best``), else the last epoch trained. It is
    returned in ``eval()`` mode, ready for scoring.
    """

    model: nn.Module = field(repr=False)
    history: pd.DataFrame = field(repr=False)
    best_epoch: int | None
    best_val_loss: float | None
    stopped_early: bool
    resumed_from: int | None
    checkpoint_path: Path | None
    device: str
    precision: str


# --------------------------------------------------------------------------- device, seeds


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """The device to train on: ``"auto"`` picks CUDA, then Apple MPS, then the CPU.

    An explicit name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) wins, and asking for a
    device this machine does not have raises ``RuntimeError`` instead of quietly training on
    the CPU for hours.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        msg = (
            f"device={device!r} is not a device name; expected 'auto', 'cpu', 'cuda', "
            "'cuda:N' or 'mps'."
        )
        raise ValueError(msg) from err
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            msg = (
                f"device={device!r} was asked for, but CUDA is not available here "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda}; no GPU visible). "
                "Pass device='auto' (uses the best device present) or device='cpu'."
            )
            raise RuntimeError(msg)
        count = torch.cuda.device_count()
        if chosen.index is not None and chosen.index >= count:
            msg = (
                f"device={device!r} was asked for, but this machine has {count} CUDA device(s) "
                f"(cuda:0..cuda:{count - 1})."
            )
            raise RuntimeError(msg)
    if chosen.type == "mps" and not mps_available():
        msg = (
            f"device={device!r} was asked for, but Apple MPS is not available here. Pass "
            "device='auto' or 'cpu'."
        )
        raise RuntimeError(msg)
    return chosen


def seed_everything(seed: int, deterministic: bool = False) -> int:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device).

    ``deterministic=True`` also asks torch for deterministic kernels (slower on GPUs; it is a
    process-wide switch). On a CPU the loop is deterministic without it. Returns ``seed``.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        msg = f"seed must be a non-negative integer, got {seed!r}."
        raise ValueError(msg)
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        # cuBLAS needs this workspace setting for deterministic matmuls (read at first use).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    return seed


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 32-bit seed for one epoch of one run.

    Shuffling from ``epoch_seed(seed, epoch)`` makes epoch ``e``'s batches the same whether the
    run started at epoch 1 or resumed at epoch ``e``. Per-epoch samplers (a Patch SVDD patch
    sampler, say) can use it too.
    """
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: seed NumPy and ``random`` in each worker process.

    torch gives each worker the seed ``base_seed + worker_id`` (``base_seed`` is drawn from the
    loader's generator, which ``fit`` re-seeds every epoch). Recent torch versions also seed
    NumPy and ``random`` in workers; doing it here makes it explicit and gives users who build
    their own DataLoaders one name to pass, so augmentations never repeat across workers.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


# --------------------------------------------------------------------------- data


def _refuse_test_split(data: Any) -> None:
    """Early stopping on the test split is model selection on the test set: refuse it."""
    seen = 0
    stack = [data]
    while stack and seen < 32:
        item = stack.pop()
        seen += 1
        if getattr(item, "split", None) == "test":
            msg = (
                "val_data is a test split (its split attribute is 'test'). Early stopping and "
                "best-weight selection on it would choose the model on the test set. Hold out "
                "part of the training data instead (e.g. torch.utils.data.random_split)."
            )
            raise ValueError(msg)
        stack.extend(getattr(item, "datasets", []) or [])
        inner = getattr(item, "dataset", None)
        if inner is not None:
            stack.append(inner)


def _epoch_batches(
    data: Any,
    *,
    role: str,
    batch_size: int | None,
    shuffle: bool,
    seed: int,
    num_workers: int,
    drop_last: bool,
    pin_memory: bool,
) -> Callable[[int], Iterable]:
    """Turn ``train_data`` / ``val_data`` into ``epoch -> iterable of batches``.

    A map-style Dataset gets a DataLoader whose shuffling generator is re-seeded from
    ``(seed, epoch)`` at each epoch. A DataLoader, or any re-iterable of batches, is used as
    is; a callable is called with the (1-based) epoch number and must return the batches.
    """
    if isinstance(data, DataLoader):
        if batch_size is not None and data.batch_size != batch_size:
            msg = (
                f"{role} is a DataLoader with batch_size={data.batch_size}, but fit got "
                f"batch_size={batch_size}. Pass the Dataset (fit builds the loader) or leave "
                "batch_size=None."
            )
            raise ValueError(msg)
        return lambda epoch: data
    if isinstance(data, Dataset):
        if batch_size is None:
            msg = f"{role} is a Dataset, so fit builds its DataLoader and needs a batch_size."
            raise ValueError(msg)
        generator = torch.Generator()
        loader = DataLoader(
            data,
            batch_size=batch_size,
            shuffle=shuffle and not isinstance(data, IterableDataset),
            generator=generator,
            num_workers=num_workers,
            worker_init_fn=seed_worker if num_workers > 0 else None,
            # Not persistent: fresh workers each epoch get seeds from (seed, epoch), which a
            # resumed run reproduces; persistent workers would carry state across epochs.
            persistent_workers=False,
            pin_memory=pin_memory,
            drop_last=drop_last,
        )

        def batches(epoch: int) -> DataLoader:
            generator.manual_seed(epoch_seed(seed, epoch))
            return loader

        return batches
    if callable(data):
        return data
    if not isinstance(data, Iterable):
        msg = (
            f"{role} must be a Dataset, a DataLoader, an iterable of batches or a callable epoch "
            f"-> batches; got {type(data).__name__}."
        )
        raise TypeError(msg)
    if iter(data) is data:
        msg = (
            f"{role} is a one-shot iterator ({type(data).__name__}): it would be empty from the "
            "second epoch on. Pass a list, a DataLoader, or a callable epoch -> batches."
        )
        raise TypeError(msg)
    if batch_size is not None:
        msg = (
            f"batch_size={batch_size} only applies when {role} is a Dataset; {role} is a "
            f"{type(data).__name__} of ready batches."
        )
        raise ValueError(msg)
    return lambda epoch: data


def _to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move every tensor in ``batch`` (nested dicts, lists, tuples) to ``device``.

    ``non_blocking`` lets host-to-GPU copies from pinned memory overlap with compute.
    Strings and other values (e.g. the data sets' ``"path"``) pass through.
    """
    if isinstance(batch, torch.Tensor):
        if channels_last and batch.ndim == 4 and batch.is_floating_point():
            return batch.to(device, non_blocking=True, memory_format=torch.channels_last)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(v, device, channels_last) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device, channels_last) for v in batch)
    return batch


def _steps_per_epoch(batches: Any) -> int | None:
    try:
        return len(batches)
    except TypeError:
        return None


# --------------------------------------------------------------------------- optimisation pieces


def _build_optimizer(
    optimizer: str | Callable | torch.optim.Optimizer,
    params: list[nn.Parameter],
    lr: float,
    weight_decay: float,
    device: torch.device,
) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        return optimizer(params)
    # Fused kernels: one launch per step for all parameters on CUDA.
    fused = {"fused": True} if device.type == "cuda" else {}
    name = str(optimizer).lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)
    msg = (
        f"optimizer={optimizer!r} is not known; use 'adam', 'adamw', 'sgd', or a callable "
        "(params -> torch.optim.Optimizer)."
    )
    raise ValueError(msg)


def _precision(amp: bool | str, device: torch.device) -> str:
    """``"fp32"``, ``"fp16"`` or ``"bf16"``: AMP only runs on CUDA (CPU autocast is slow)."""
    choices = {
        False: "fp32",
        None: "fp32",
        True: "fp16",
        "fp16": "fp16",
        "float16": "fp16",
        "bf16": "bf16",
        "bfloat16": "bf16",
        "fp32": "fp32",
    }
    if amp not in choices:
        msg = f"amp={amp!r} is not understood; use True (fp16), 'bf16' or False."
        raise ValueError(msg)
    precision = choices[amp]
    if device.type != "cuda":
        return "fp32"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        msg = (
            "amp='bf16' was asked for, but this GPU does not support bfloat16; use amp=True "
            "(fp16) or False."
        )
        raise RuntimeError(msg)
    return precision


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _grad_scaler(enabled: bool) -> Any:
    """Loss scaling for fp16 (bf16 has fp32's range and needs none); a no-op when disabled."""
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


def _loss_terms(output: Any) -> dict[str, torch.Tensor]:
    """Normalise ``loss_fn``'s output to ``{"loss": scalar, other terms...}``."""
    terms = dict(output) if isinstance(output, Mapping) else {"loss": output}
    if "loss" not in terms:
        msg = (
            f"loss_fn returned a dict without a 'loss' key (keys: {sorted(terms)}); put the value "
            "to minimise under 'loss'."
        )
        raise ValueError(msg)
    loss = terms["loss"]
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        msg = f"loss_fn must return a scalar tensor as the loss; got {shape}. Reduce it (.mean())."
        raise ValueError(msg)
    return terms


class _EpochMeans:
    """Per-epoch means of the loss terms, summed on the device: one host sync per epoch."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, terms: Mapping[str, Any]) -> None:
        for name, value in terms.items():
            value = torch.as_tensor(value, device=self.device).detach().float().mean()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        if not self.sums:
            return {}
        names = list(self.sums)
        values = torch.stack([self.sums[n] / self.counts[n] for n in names]).tolist()
        return dict(zip(names, values))


def _train_one_epoch(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    *,
    device: torch.device,
    precision: str,
    grad_clip: float | None,
    channels_last: bool,
    bar: Any,
) -> dict[str, float]:
    model.train()
    means = _EpochMeans(device)
    for batch in batches:
        batch = _to_device(batch, device, channels_last)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            terms = _loss_terms(loss_fn(model, batch))
        scaler.scale(terms["loss"]).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            params = [p for group in optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(optimizer)
        scaler.update()
        means.add(terms)
        bar.update(1)
    return means.means()


def _evaluate(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable,
    *,
    device: torch.device,
    precision: str,
    channels_last: bool,
) -> dict[str, float]:
    """Mean loss terms over the validation batches (model in eval mode, no gradients)."""
    model.eval()
    means = _EpochMeans(device)
    with torch.no_grad():
        for batch in batches:
            batch = _to_device(batch, device, channels_last)
            with _autocast(device, precision):
                means.add(_loss_terms(loss_fn(model, batch)))
    return means.means()


def _cpu_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _progress_bar(progress: bool | str, total: int | None, initial: int, desc: str) -> Any:
    """One bar over all training batches; ``"text"`` forces a plain-text bar in notebooks.

    Otherwise :func:`adlib.training.progress.progress` decides: a live bar interactively, one summary
    line when the book is built.
    """
    bar = tqdm if progress == "text" else live_progress
    return bar(
        total=total,
        initial=initial,
        desc=desc,
        unit="batch",
        disable=not progress,
        dynamic_ncols=True,
    )


# --------------------------------------------------------------------------- the loop


@dataclass
class _RunState:
    """Everything about a run's progress that a resumed run must get back."""

    epoch: int = 0  # epochs completed
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float | None = None
    # {"model": state dict, "extra": {name: state dict}}, on the CPU
    best_weights: dict[str, Any] | None = None
    stopped_early: bool = False

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def history_lists(self) -> dict[str, list]:
        columns = list(dict.fromkeys(c for row in self.rows for c in row))
        return {c: [row.get(c, math.nan) for row in self.rows] for c in columns}


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train_data: Any,
    *,
    epochs: int,
    val_data: Any = None,
    optimizer: str | Callable[[list], torch.optim.Optimizer] | torch.optim.Optimizer = "adam",
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    device: str | torch.device = "auto",
    seed: int = 0,
    deterministic: bool = False,
    amp: bool | str = True,
    channels_last: bool = False,
    grad_clip: float | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = True,
    patience: int | None = None,
    min_delta: float = 0.0,
    restore_best: bool = True,
    desc: str = "train",
    progress: bool | str = True,
    extra_state: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` by minimising ``loss_fn(model, batch)`` for ``epochs`` epochs.

    Args:
        loss_fn: ``(model, batch) -> scalar tensor`` or a dict with the scalar under ``"loss"``;
            the other entries are logged as ``train_<name>`` / ``val_<name>`` columns. The batch
            arrives on the device already.
        train_data: a map-style Dataset (``fit`` builds a shuffled DataLoader; needs
            ``batch_size``), a DataLoader or re-iterable of batches (used as is), or a callable
            ``epoch -> iterable of batches`` (epoch counts from 1).
        val_data: the *validation* split, same kinds as ``train_data`` (never the test split:
            it picks the best epoch). When given, the returned model holds the weights of the
            epoch with the lowest validation loss (``restore_best=False`` keeps the last ones).
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` (with ``lr`` and ``weight_decay``), or a
            callable receiving the list of trainable parameters of ``model``.
        batch_size, num_workers, drop_last: for the DataLoaders ``fit`` builds from Datasets
            (a validation Dataset uses ``batch_size`` too). Workers are seeded by
            :func:`seed_worker`, so random augmentations are reproducible as well.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` (see :func:`pick_device`).
        seed, deterministic: see :func:`seed_everything`; the seed also fixes the batch order.
        scheduler: ``optimizer -> LR scheduler``, stepped once per epoch (``ReduceLROnPlateau``
            gets the validation loss, or the training loss without validation).
        amp: on CUDA, ``True`` = fp16 autocast + GradScaler, ``"bf16"`` = bfloat16 autocast,
            ``False`` = fp32. Ignored (fp32) on other devices.
        channels_last: move the model and 4-D input tensors to channels-last memory layout.
        grad_clip: clip the gradients' total L2 norm to this value before each step.
        checkpoint_dir: where ``last.pt`` (every ``checkpoint_every`` epochs and at the end) and
            ``best.pt`` (with validation) go. With ``resume=True`` an existing ``last.pt`` is
            continued; a finished run returns at once.
        patience: stop when the validation loss has not improved by more than ``min_delta`` for
            this many epochs (needs ``val_data``).
        extra_state: more objects with ``state_dict()`` (modules, optimisers, schedulers) or
            ``torch.Generator``s to checkpoint and restore, e.g. a second network trained inside
            ``loss_fn``. Modules are moved to the device, and restored to the best epoch with the
            model.
        progress: ``True`` (tqdm.auto: a widget in notebooks), ``"text"`` (plain-text bar), or
            ``False`` (silent).

    Returns:
        :class:`FitResult`; ``history`` has one row per epoch: ``epoch``, ``train_loss``,
        ``train_<term>``..., ``val_loss``, ``val_<term>``..., ``lr``, ``seconds``. Losses are
        means of the per-batch values; ``lr`` is the rate used during the epoch.
    """
    extras = dict(extra_state or {})
    _check_fit_args(epochs, checkpoint_every, patience, val_data, extras)
    if val_data is not None:
        _refuse_test_split(val_data)

    device = pick_device(device)
    seed_everything(seed, deterministic)
    precision = _precision(amp, device)
    modules = _move_to_device(model, extras, device, channels_last)
    train_batches, val_batches = _batch_sources(
        train_data,
        val_data,
        batch_size=batch_size,
        seed=seed,
        num_workers=num_workers,
        drop_last=drop_last,
        device=device,
    )
    generators = loader_generators(train_data)
    opt, sched, scaler = _optimisation(
        model, optimizer, lr, weight_decay, scheduler, device, precision
    )
    settings = run_settings(seed, batch_size, optimizer, lr, weight_decay, val_data is not None)

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    run = _Fit(
        model=model,
        loss_fn=loss_fn,
        opt=opt,
        sched=sched,
        scaler=scaler,
        extras=extras,
        modules=modules,
        generators=generators,
        settings=settings,
        epochs=epochs,
        device=device,
        precision=precision,
        channels_last=channels_last,
        grad_clip=grad_clip,
        ckpt_dir=ckpt_dir,
        last_path=ckpt_dir / LAST_CHECKPOINT if ckpt_dir is not None else None,
    )
    if resume:
        run.resume_if_saved()
    if run.state.epoch >= epochs or run.state.stopped_early:
        return run.finish(restore_best)
    run.forget_earlier_best()
    run.train_epochs(
        train_batches,
        val_batches,
        progress=progress,
        desc=desc,
        min_delta=min_delta,
        patience=patience,
        checkpoint_every=checkpoint_every,
    )
    return run.finish(restore_best)


def _move_to_device(
    model: nn.Module, extras: Mapping[str, Any], device: torch.device, channels_last: bool
) -> dict[str, nn.Module]:
    """Move the model and the modules among ``extras`` to the device; return those modules."""
    model.to(device)
    if channels_last:  # faster convolutions on GPUs (and CPUs) for 4-D activations
        model.to(memory_format=torch.channels_last)
    modules = {name: obj for name, obj in extras.items() if isinstance(obj, nn.Module)}
    for module in modules.values():
        module.to(device)
    return modules


def _batch_sources(
    train_data: Any,
    val_data: Any,
    *,
    batch_size: int | None,
    seed: int,
    num_workers: int,
    drop_last: bool,
    device: torch.device,
) -> tuple[Callable[[int], Iterable], Callable[[int], Iterable] | None]:
    """The ``epoch -> batches`` functions of the training and (if any) validation data."""
    loader_kw = dict(seed=seed, num_workers=num_workers, pin_memory=device.type == "cuda")
    train_batches = _epoch_batches(
        train_data,
        role="train_data",
        batch_size=batch_size,
        shuffle=True,
        drop_last=drop_last,
        **loader_kw,
    )
    val_batches = None
    if val_data is not None:
        # A validation Dataset is batched like the training data; other kinds come batched.
        val_batch_size = (
            batch_size if batch_size is not None else getattr(train_data, "batch_size", None)
        )
        val_batch_size = val_batch_size if isinstance(val_data, Dataset) else None
        val_batches = _epoch_batches(
            val_data,
            role="val_data",
            batch_size=val_batch_size,
            shuffle=False,
            drop_last=False,
            **loader_kw,
        )
    return train_batches, val_batches


def _optimisation(
    model: nn.Module,
    optimizer: str | Callable | torch.optim.Optimizer,
    lr: float,
    weight_decay: float,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None,
    device: torch.device,
    precision: str,
) -> tuple[torch.optim.Optimizer, Any, Any]:
    """Build the optimiser, the LR scheduler (or None) and the AMP grad scaler."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params and not callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer):
        msg = (
            f"{type(model).__name__} has no trainable parameters (all requires_grad=False); "
            "nothing to fit."
        )
        raise ValueError(msg)
    opt = _build_optimizer(optimizer, params, lr, weight_decay, device)
    sched = scheduler(opt) if scheduler is not None else None
    scaler = _grad_scaler(precision == "fp16")
    return opt, sched, scaler


@dataclass
class _Fit:
    """One :func:`fit` call: what it trains with, where it checkpoints, and its progress."""

    model: nn.Module
    loss_fn: LossFn
    opt: torch.optim.Optimizer
    sched: Any
    scaler: Any
    extras: dict[str, Any]
    modules: dict[str, nn.Module]
    generators: list[torch.Generator]
    settings: dict[str, Any]
    epochs: int
    device: torch.device
    precision: str
    channels_last: bool
    grad_clip: float | None
    ckpt_dir: Path | None
    last_path: Path | None
    state: _RunState = field(default_factory=_RunState)
    resumed_from: int | None = None
    best_on_disk: int | None = None  # the epoch whose weights best.pt holds

    def resume_if_saved(self) -> None:
        """Continue from ``last.pt`` when there is one."""
        if self.last_path is None or not self.last_path.exists():
            return
        ckpt = read_checkpoint(self.last_path)
        check_resumable(ckpt, self.last_path, self.model, self.settings, self.epochs)
        restore_run(
            ckpt,
            self.last_path,
            self.model,
            self.opt,
            self.sched,
            self.scaler,
            self.extras,
            self.state,
        )
        restore_rng(ckpt["rng"], self.generators)
        self.resumed_from = self.state.epoch

    def forget_earlier_best(self) -> None:
        """Note which best.pt is this run's; delete one that a fresh start finds."""
        self.best_on_disk = self.state.best_epoch if self.resumed_from is not None else None
        if self.ckpt_dir is not None and self.resumed_from is None:
            # A fresh start: a best.pt left by an earlier run must not pose as this run's.
            (self.ckpt_dir / BEST_CHECKPOINT).unlink(missing_ok=True)

    def save_checkpoint(self) -> None:
        """Write ``best.pt`` (when the best epoch changed) and ``last.pt``."""
        state = self.state
        # best.pt first: if the run dies between the two writes, last.pt is the older one,
        # and a resumed run recomputes the same best epoch.
        if state.best_weights is not None and state.best_epoch != self.best_on_disk:
            best = {
                "format": CHECKPOINT_FORMAT,
                "model_signature": model_signature(self.model),
                "model": state.best_weights["model"],
                "epoch": state.best_epoch,
                "val_loss": state.best_val_loss,
            }
            save_atomic(plain(best), self.ckpt_dir / BEST_CHECKPOINT)
            self.best_on_disk = state.best_epoch
        save_atomic(
            plain(
                run_checkpoint(
                    self.model,
                    self.opt,
                    self.sched,
                    self.scaler,
                    self.extras,
                    state,
                    self.settings,
                    self.epochs,
                    self.generators,
                )
            ),
            self.last_path,
        )

    def train_epochs(
        self,
        train_batches: Callable[[int], Iterable],
        val_batches: Callable[[int], Iterable] | None,
        *,
        progress: bool | str,
        desc: str,
        min_delta: float,
        patience: int | None,
        checkpoint_every: int,
    ) -> None:
        """The loop: train the remaining epochs, checkpointing and stopping early as asked."""
        state = self.state
        start = state.epoch + 1
        first = train_batches(start)  # its length sizes the progress bar
        steps = _steps_per_epoch(first)
        total = steps * self.epochs if steps else None
        bar = _progress_bar(progress, total, steps * state.epoch if steps else 0, desc)
        try:
            for epoch in range(start, self.epochs + 1):
                started = time.perf_counter()
                lr_now = self.opt.param_groups[0]["lr"]
                batches = first if epoch == start else train_batches(epoch)
                row = self.train_and_validate(epoch, batches, val_batches, bar, min_delta)
                if self.sched is not None:
                    _step_scheduler(self.sched, row.get("val_loss", row["train_loss"]))
                row["lr"] = lr_now
                row["seconds"] = time.perf_counter() - started
                state.rows.append(row)
                state.epoch = epoch
                state.stopped_early = _patience_ran_out(state, epoch, patience)
                if self.last_path is not None and (
                    epoch % checkpoint_every == 0 or epoch == self.epochs or state.stopped_early
                ):
                    self.save_checkpoint()
                bar.set_postfix_str(_postfix(row, self.epochs), refresh=False)
                if state.stopped_early:
                    break
        finally:
            bar.close()

    def train_and_validate(
        self,
        epoch: int,
        batches: Iterable,
        val_batches: Callable[[int], Iterable] | None,
        bar: Any,
        min_delta: float,
    ) -> dict[str, Any]:
        """One epoch's training and validation: its history row so far (losses only)."""
        train = _train_one_epoch(
            self.model,
            self.loss_fn,
            batches,
            self.opt,
            self.scaler,
            device=self.device,
            precision=self.precision,
            grad_clip=self.grad_clip,
            channels_last=self.channels_last,
            bar=bar,
        )
        _check_train_losses(train, epoch)
        row: dict[str, Any] = {"epoch": epoch}
        row.update({f"train_{k}": v for k, v in train.items()})
        if val_batches is not None:
            val = _evaluate(
                self.model,
                self.loss_fn,
                val_batches(epoch),
                device=self.device,
                precision=self.precision,
                channels_last=self.channels_last,
            )
            row.update({f"val_{k}": v for k, v in val.items()})
            _track_best(
                self.state, epoch, val.get("loss", math.nan), min_delta, self.model, self.modules
            )
        return row

    def finish(self, restore_best: bool) -> FitResult:
        """The result: see :func:`_finish`."""
        return _finish(
            self.model,
            self.modules,
            self.state,
            restore_best,
            self.resumed_from,
            self.last_path,
            self.device,
            self.precision,
        )


def _check_train_losses(train: Mapping[str, float], epoch: int) -> None:
    """Refuse an epoch that gave no batches or a non-finite training loss."""
    if not train:
        msg = (
            f"train_data gave no batches in epoch {epoch} (a data set smaller than "
            "batch_size with drop_last=True?)."
        )
        raise ValueError(msg)
    if not math.isfinite(train["loss"]):
        msg = (
            f"The training loss is {train['loss']} in epoch {epoch}; last.pt keeps the "
            "last finite epoch. Lower lr, set grad_clip, or try amp=False / amp='bf16'."
        )
        raise FloatingPointError(msg)


def _check_fit_args(
    epochs: Any, checkpoint_every: Any, patience: Any, val_data: Any, extras: Mapping[str, Any]
) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        msg = f"epochs must be a positive integer, got {epochs!r}."
        raise ValueError(msg)
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        msg = f"checkpoint_every must be a positive integer (epochs), got {checkpoint_every!r}."
        raise ValueError(msg)
    if patience is not None and val_data is None:
        msg = (
            "patience needs val_data: early stopping watches the validation loss (never the "
            "test split)."
        )
        raise ValueError(msg)
    if patience is not None and patience < 1:
        msg = f"patience must be a positive number of epochs or None, got {patience!r}."
        raise ValueError(msg)
    for name, obj in extras.items():
        if not isinstance(obj, torch.Generator) and not (
            hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")
        ):
            msg = (
                f"extra_state[{name!r}] is a {type(obj).__name__}; it needs "
                "state_dict()/load_state_dict() (or be a torch.Generator)."
            )
            raise TypeError(msg)


def _track_best(
    state: _RunState,
    epoch: int,
    val_loss: float,
    min_delta: float,
    model: nn.Module,
    modules: Mapping[str, nn.Module],
) -> None:
    """Remember the epoch with the lowest validation loss and a CPU copy of its weights."""
    improved = math.isfinite(val_loss) and (
        state.best_val_loss is None or val_loss < state.best_val_loss - min_delta
    )
    if improved:
        state.best_epoch = epoch
        state.best_val_loss = val_loss
        state.best_weights = {
            "model": _cpu_copy(model),
            "extra": {n: _cpu_copy(m) for n, m in modules.items()},
        }


def _patience_ran_out(state: _RunState, epoch: int, patience: int | None) -> bool:
    """True when the validation loss has not improved for ``patience`` epochs."""
    if patience is None:
        return False
    last_improvement = state.best_epoch or 0  # 0: never finite yet
    return epoch - last_improvement >= patience


def _step_scheduler(scheduler: Any, metric: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(metric)
    else:
        scheduler.step()


def _postfix(row: Mapping[str, Any], epochs: int) -> str:
    text = f"epoch {row['epoch']}/{epochs} loss {row['train_loss']:.4g}"
    if "val_loss" in row:
        text += f" val {row['val_loss']:.4g}"
    return text


def _finish(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    state: _RunState,
    restore_best: bool,
    resumed_from: int | None,
    last_path: Path | None,
    device: torch.device,
    precision: str,
) -> FitResult:
    """Put the best-validation weights back (if any); hand the model over in eval mode."""
    best_epoch = state.epoch
    if restore_best and state.best_weights is not None:
        model.load_state_dict(state.best_weights["model"])
        for name, weights in state.best_weights.get("extra", {}).items():
            if name in modules:
                modules[name].load_state_dict(weights)
        best_epoch = state.best_epoch
    model.eval()
    return FitResult(
        model=model,
        history=state.history(),
        best_epoch=best_epoch,
        best_val_loss=state.best_val_loss,
        stopped_early=state.stopped_early,
        resumed_from=resumed_from,
        checkpoint_path=last_path,
        device=str(device),
        precision=precision,
    )
