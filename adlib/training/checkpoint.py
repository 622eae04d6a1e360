"""Checkpoints of :func:`adlib.training.train.fit`: what a model is, how it is saved, and every RNG state.

Split from ``adlib/training/train.py`` so that the training loop reads as a loop: it calls these by their
public names (what a checkpoint holds, how a run is checked and restored). Everything here is
about one promise: a checkpoint can be read with ``torch.load(weights_only=True)``, is never
half-written, refuses to load into another architecture (:class:`CheckpointMismatchError`),
and carries the random state needed to resume a run bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

#: Bumped when the layout of ``last.pt`` changes in a way older code cannot read.
CHECKPOINT_FORMAT = 1
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


class CheckpointMismatchError(ValueError):
    """A checkpoint belongs to another model or another run than the one asked for."""


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


# --------------------------------------------------------------------------- model identity


def model_signature(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint records about the model it holds: class, tensor names and shapes, hash.

    Two models share a signature when they are the same class with the same state-dict entries
    (parameters and buffers) of the same shapes, i.e. when one's weights load into the other.
    """
    tensors = sorted([name, list(t.shape)] for name, t in model.state_dict().items())
    digest = hashlib.sha256(json.dumps(tensors).encode()).hexdigest()[:16]
    kind = type(model)
    return {
        "class": f"{kind.__module__}.{kind.__qualname__}",
        "hash": digest,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "tensors": tensors,
    }


def _describe(signature: Mapping[str, Any]) -> str:
    n = signature["n_parameters"]
    return f"{signature['class']} ({n:,} parameters, signature {signature['hash']})"


def _check_signature(found: Mapping[str, Any], model: nn.Module, where: str, fix: str) -> None:
    """Raise :class:`CheckpointMismatchError` unless the checkpoint's model is ``model``'s kind."""
    expected = model_signature(model)
    if found["class"] == expected["class"] and found["hash"] == expected["hash"]:
        return
    ckpt_shapes = {name: shape for name, shape in found["tensors"]}
    model_shapes = {name: shape for name, shape in expected["tensors"]}
    details = []
    missing = sorted(set(model_shapes) - set(ckpt_shapes))
    unexpected = sorted(set(ckpt_shapes) - set(model_shapes))
    reshaped = sorted(
        n for n in set(ckpt_shapes) & set(model_shapes) if ckpt_shapes[n] != model_shapes[n]
    )
    if missing:
        details.append(
            f"missing from the checkpoint: {', '.join(missing[:3])}"
            + (" ..." if len(missing) > 3 else "")
        )
    if unexpected:
        details.append(
            f"not in the model: {', '.join(unexpected[:3])}"
            + (" ..." if len(unexpected) > 3 else "")
        )
    for name in reshaped[:3]:
        details.append(f"{name}: checkpoint {ckpt_shapes[name]}, model {model_shapes[name]}")
    msg = (
        f"{where} holds a {_describe(found)}, but the model given is a {_describe(expected)}"
        + (f" ({'; '.join(details)})" if details else "")
        + f". {fix}"
    )
    raise CheckpointMismatchError(msg)


# --------------------------------------------------------------------------- checkpoints


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file in the same folder, then ``os.replace`` it onto ``path``.

    ``os.replace`` is atomic within one file system, so a reader (or a resumed run) sees either
    the old checkpoint or the new one, never half a file; the temp file is removed on failure.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with NumPy values turned into tensors / Python numbers, or a clear error.

    ``torch.load(weights_only=True)`` refuses arbitrary pickled objects, so everything saved
    must be tensors, dicts, lists, tuples, strings, numbers, bools or None.
    """
    if isinstance(obj, (torch.Tensor, str, int, float, bool, type(None), torch.Size)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, Mapping):
        return {k: plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    msg = (
        f"Cannot checkpoint {where}: a {type(obj).__name__}. Checkpoints hold only tensors and "
        "plain Python values so that torch.load(weights_only=True) can read them; keep such "
        "objects out of state_dict() or extra_state."
    )
    raise TypeError(msg)


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        msg = (
            f"Could not read the checkpoint {path} ({type(err).__name__}: {err}). Delete it, or "
            "pass resume=False to start over."
        )
        raise CheckpointMismatchError(msg) from err
    if not isinstance(ckpt, dict) or "model_signature" not in ckpt:
        msg = (
            f"{path} is not a checkpoint written by adlib.training.train.fit (no model_signature). Use "
            "another checkpoint_dir."
        )
        raise CheckpointMismatchError(msg)
    return ckpt


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    extra_state: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a ``last.pt`` or ``best.pt`` written by :func:`fit` into ``model`` (and friends).

    Reads with ``weights_only=True`` and refuses a checkpoint of another architecture
    (:class:`CheckpointMismatchError`). ``best.pt`` holds the best-validation weights,
    ``last.pt`` the weights after the last epoch trained. Returns the checkpoint dict (its
    ``"epoch"``, ``"history"`` (a dict of lists: ``pd.DataFrame(ckpt["history"])``), ...).
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    fix = (
        "Load a checkpoint of this model (another checkpoint_dir), or build the model that was "
        "trained."
    )
    _check_signature(ckpt["model_signature"], model, str(path), fix)
    model.load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if extra_state:
        _load_extra_state(extra_state, ckpt.get("extra_state") or {}, path)
    return ckpt


def _extra_states(extra_state: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for name, obj in extra_state.items():
        if isinstance(obj, torch.Generator):
            out[name] = {"generator_state": obj.get_state()}
        else:
            out[name] = {"state_dict": obj.state_dict()}
            if isinstance(obj, nn.Module):
                out[name]["signature"] = model_signature(obj)
    return out


def _load_extra_state(extra_state: Mapping[str, Any], saved: Mapping[str, Any], path: Path) -> None:
    missing = sorted(set(extra_state) - set(saved))
    if missing:
        msg = (
            f"{path} has no extra_state entries {missing} (it holds {sorted(saved)}). "
            "Pass the same extra_state names as the run that wrote it, or resume=False."
        )
        raise CheckpointMismatchError(msg)
    for name, obj in extra_state.items():
        entry = saved[name]
        if isinstance(obj, torch.Generator):
            obj.set_state(entry["generator_state"])
            continue
        if isinstance(obj, nn.Module):
            fix = (
                f"extra_state[{name!r}] must be the same kind of module as in the run that wrote "
                "the checkpoint."
            )
            _check_signature(entry["signature"], obj, f"{path} (extra_state[{name!r}])", fix)
        obj.load_state_dict(entry["state_dict"])


# --------------------------------------------------------------------------- RNG states


def _rng_state(generators: Iterable[torch.Generator] = ()) -> dict[str, Any]:
    """Every RNG the loop draws from, as tensors and plain values (weights_only-safe)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }
    # Reading CUDA states would initialise CUDA in a CPU-only run; skip it when unused.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if mps_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng(state: Mapping[str, Any], generators: Iterable[torch.Generator] = ()) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    for generator, saved in zip(generators, state.get("generators", [])):
        generator.set_state(saved)
    cuda_states = state.get("cuda")
    if (
        cuda_states is not None
        and torch.cuda.is_available()
        and len(cuda_states) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(cuda_states)
    if "mps" in state and mps_available():
        torch.mps.set_rng_state(state["mps"])


def loader_generators(data: Any) -> list[torch.Generator]:
    """Generators inside a user's DataLoader: their state must be checkpointed too."""
    if not isinstance(data, DataLoader):
        return []
    found = []
    for candidate in (data.generator, getattr(data.sampler, "generator", None)):
        if isinstance(candidate, torch.Generator) and all(candidate is not g for g in found):
            found.append(candidate)
    return found


# ------------------------------------------------------------------ a run's resume state

def run_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    extras: Mapping[str, Any],
    state: Any,
    settings: Mapping[str, Any],
    epochs: int,
    generators: list[torch.Generator],
) -> dict[str, Any]:
    """The content of ``last.pt``: all a resumed run needs, in weights_only-safe types."""
    best_model = None
    if state.best_weights is not None:
        # When the best epoch is the one just saved, its weights are "model": don't store twice.
        best_model = None if state.best_epoch == state.epoch else state.best_weights
    return {
        "format": CHECKPOINT_FORMAT,
        "model_signature": model_signature(model),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "extra_state": _extra_states(extras),
        "rng": _rng_state(generators),
        "history": state.history_lists(),
        "epoch": state.epoch,
        "epochs": epochs,
        "stopped_early": state.stopped_early,
        "best": {"epoch": state.best_epoch, "val_loss": state.best_val_loss, "weights": best_model},
        "settings": dict(settings),
    }


def run_settings(
    seed: int, batch_size: int | None, optimizer: Any, lr: float, weight_decay: float, val: bool
) -> dict[str, Any]:
    """The arguments that define a run's batches and updates: a resume must not change them."""
    named = isinstance(optimizer, str)
    return {
        "seed": int(seed),
        "batch_size": batch_size,
        "optimizer": optimizer
        if named
        else getattr(optimizer, "__qualname__", type(optimizer).__name__),
        "lr": float(lr) if named else None,
        "weight_decay": float(weight_decay) if named else None,
        "validation": val,
    }


def check_resumable(
    ckpt: Mapping[str, Any], path: Path, model: nn.Module, settings: Mapping[str, Any], epochs: int
) -> None:
    fix = (
        f"Use another checkpoint_dir for this model, delete {path.parent}, "
        "or pass resume=False to start over (which overwrites it)."
    )
    _check_signature(ckpt["model_signature"], model, str(path), fix)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        msg = (
            f"{path} has checkpoint format {ckpt.get('format')}, this adlib writes "
            f"{CHECKPOINT_FORMAT}. {fix}"
        )
        raise CheckpointMismatchError(msg)
    saved = ckpt.get("settings", {})
    changed = [
        f"{k}: checkpoint {saved.get(k)!r}, now {v!r}"
        for k, v in settings.items()
        if saved.get(k) != v
    ]
    if changed:
        msg = (
            f"{path} was written by a run with other settings ({'; '.join(changed)}); resuming "
            f"would mix two runs. {fix}"
        )
        raise CheckpointMismatchError(msg)
    if ckpt["epoch"] > epochs:
        msg = (
            f"{path} holds a run already trained for {ckpt['epoch']} epochs, more than "
            f"epochs={epochs}. Pass epochs>={ckpt['epoch']}, or: {fix}"
        )
        raise CheckpointMismatchError(msg)


def restore_run(
    ckpt: Mapping[str, Any],
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    extras: Mapping[str, Any],
    state: Any,
) -> None:
    """Load model, optimiser, scheduler, scaler, extra_state and bookkeeping from ``last.pt``."""
    model.load_state_dict(ckpt["model"])
    # Optimiser before scheduler: creating the scheduler rewrote the lr, loading restores it.
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler.is_enabled() and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    _load_extra_state(extras, ckpt.get("extra_state") or {}, path)
    state.epoch = int(ckpt["epoch"])
    state.rows = pd.DataFrame(ckpt["history"]).to_dict("records")
    state.stopped_early = bool(ckpt["stopped_early"])
    best = ckpt["best"]
    state.best_epoch, state.best_val_loss = best["epoch"], best["val_loss"]
    if best["epoch"] is not None:
        if best["weights"] is not None:
            state.best_weights = best["weights"]
        else:  # the best epoch was the checkpointed one
            state.best_weights = {
                "model": {k: v.clone() for k, v in ckpt["model"].items()},
                "extra": {
                    n: dict(e["state_dict"])
                    for n, e in (ckpt.get("extra_state") or {}).items()
                    if "signature" in e
                },
            }
