"""Training checkpoints for ``convkit train --out DIR`` / ``--resume DIR``.

After every epoch rank 0 writes ``DIR/checkpoint.pt``: the model and optimizer state, every rank's
random-number states (torch's CPU generator, which draws the dropout masks on the CPU, the CUDA
generator on a GPU, numpy's and Python's), the data sampler's position (epochs done: each epoch's
order comes from the seed and the epoch number), the metrics so far and the run's options. A
resumed run restores all of it and repeats the uninterrupted run step for step.

Files are written to a temporary name in the same directory and renamed into place, so an
interrupted write never leaves a half-written checkpoint (or metrics file) behind.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"
FORMAT = "convkit-train-checkpoint/1"
#: options that shape the training steps: a resumed run must use the checkpoint's values
MUST_MATCH = ("data", "train_size", "batch_size", "lr", "seed", "limit_batches", "dropout")
_ENTRIES = {"model", "optimizer", "epoch", "step", "world_size", "rng", "history", "config"}
_FLAGS = {name: "--" + name.replace("_", "-") for name in MUST_MATCH}


def atomic_write(path: Union[str, os.PathLike], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it to ``path``;
    on any error the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the suffix stays last, for writers that pick the format by it (matplotlib)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def rng_state(device: torch.device) -> dict:
    """This process's random-number states, in types ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, [int(k) for k in keys], pos, has_gauss, gauss],
             "python": [version, list(internal), gauss_next]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoint_path(where: Union[str, os.PathLike]) -> Path:
    """``DIR/checkpoint.pt`` for a directory, the path itself for a file."""
    where = Path(where)
    return where if where.is_file() else where / CHECKPOINT


def save(path: Union[str, os.PathLike], *, model: torch.nn.Module,
         optimizer: torch.optim.Optimizer, epoch: int, step: int, world_size: int,
         rng: List[dict], history: dict, config: dict) -> Path:
    """Write a training checkpoint atomically (``rng``: one state per rank, in rank order)."""
    state = {"format": FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "epoch": epoch, "step": step, "world_size": world_size,
             "sampler": {"seed": config["seed"], "epochs_done": epoch},
             "rng": rng, "history": history, "config": config}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load(where: Union[str, os.PathLike], model: torch.nn.Module, config: dict,
         world_size: int) -> dict:
    """Read and check the checkpoint in ``where`` (a directory or a file) for resuming a run of
    ``model`` with the options ``config`` on ``world_size`` ranks. Returns the checkpoint dict.

    Raises ValueError (one line, naming ``--resume`` or the option at fault) for a missing,
    unreadable or foreign file, a different model, options that change the training steps, a
    different number of ranks, or ``--epochs`` not beyond the epochs already done.
    """
    path = checkpoint_path(where)
    flag = f"--resume {where}"
    if not path.is_file():
        raise ValueError(f"{flag}: no {CHECKPOINT} there (convkit train --out DIR writes one "
                         "after every epoch)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged zip / pickle
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{flag}: {path} is not a readable checkpoint ({type(e).__name__}: "
                         f"{reason[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{flag}: {path} is not a convkit train checkpoint (no "
                         f"format {FORMAT!r} entry; model.pt holds weights only)")
    absent = sorted(_ENTRIES - set(ckpt))
    if absent:
        raise ValueError(f"{flag}: {path} is damaged: it lacks {absent}")
    problem = _model_mismatch(ckpt["model"], model.state_dict())
    if problem:
        raise ValueError(f"{flag}: {path} holds a different model: {problem}")
    saved = ckpt["config"]
    diffs = [f"{_FLAGS[k]} {saved.get(k)} (this command: {config.get(k)})"
             for k in MUST_MATCH if _normal(k, saved.get(k)) != _normal(k, config.get(k))]
    if diffs:
        raise ValueError(f"{flag}: the checkpoint was trained with " + ", ".join(diffs)
                         + "; repeat the original options (only --epochs may grow)")
    if ckpt["world_size"] != world_size:
        raise ValueError(f"{flag}: the checkpoint was written by {ckpt['world_size']} rank(s), "
                         f"this run has {world_size}; resume with --nproc-per-node "
                         f"{ckpt['world_size']} so it repeats exactly")
    if ckpt["epoch"] >= config["epochs"]:
        raise ValueError(f"--epochs {config['epochs']}: the checkpoint in {where} has already "
                         f"trained {ckpt['epoch']} epoch(s); ask for more to continue it")
    return ckpt


def _normal(option: str, value):
    """``--data`` compared as the directory it names, so ``DIR`` and ``DIR/`` are the same."""
    if option == "data" and value != "mnist-5k" and isinstance(value, str) \
            and os.path.isdir(value):
        return os.path.realpath(value)
    return value


def _model_mismatch(saved: Dict[str, torch.Tensor],
                    expected: Dict[str, torch.Tensor]) -> Optional[str]:
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    if missing or unexpected:
        return f"missing {missing[:4]}, unexpected {unexpected[:4]}"
    for k, v in expected.items():
        if tuple(saved[k].shape) != tuple(v.shape):
            return f"{k} has shape {tuple(saved[k].shape)}, this model's is {tuple(v.shape)}"
    return None


__all__ = ["CHECKPOINT", "FORMAT", "MUST_MATCH", "atomic_write", "rng_state", "set_rng_state",
           "checkpoint_path", "save", "load"]
