"""Reading the model states of a DeepSpeed checkpoint without running code from it.

`mp_rank_00_model_states.pt` is a torch pickle: beside `module` (the state dict) DeepSpeed stores
its config, step counters and, depending on the version, objects of its own classes. It is read
with `torch.load(weights_only=True)`, which only rebuilds tensors and plain containers, and
memory-mapped, so a 15 GB file costs page cache rather than 15 GB of RAM. A class the loader does
not know is an error naming it; names on the allow-list (or passed by a user who trusts the
file) are rebuilt as inert `OpaqueObject`s that hold their arguments and run nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

MODEL_STATES = "mp_rank_00_model_states.pt"
# Classes DeepSpeed versions put beside the weights (optimiser-state enums, loss scalers, the
# argparse namespace of a training script, numpy scalars in counters). None of them is needed to
# read `module`; each is rebuilt as an OpaqueObject.
KNOWN_GLOBALS = (
    "argparse.Namespace",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
)


class OpaqueObject:
    """Stands in for an object of a class this reader does not import: it keeps the arguments it
    was built with and its state, and has no behaviour."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"OpaqueObject(args={self.args!r})"


def model_states_path(path: str | Path) -> Path:
    """The model-states file of a checkpoint given as the file, a `global_stepN` folder, or the
    run folder with DeepSpeed's `latest` tag file."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if (path / MODEL_STATES).is_file():
        return path / MODEL_STATES
    if (path / "latest").is_file():
        tagged = path / (path / "latest").read_text().strip() / MODEL_STATES
        if tagged.is_file():
            return tagged
    raise FileNotFoundError(f"--checkpoint {path}: no {MODEL_STATES} there (give the file or its global_stepN folder)")


def load_model_states(path: str | Path, allow_globals: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The `module` state dict of a DeepSpeed checkpoint, memory-mapped; every entry a tensor."""
    path = model_states_path(path)
    unknown = [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))]
    allowed = set(KNOWN_GLOBALS) | set(allow_globals)
    refused = sorted(set(unknown) - allowed)
    if refused:
        raise ValueError(
            f"{path} holds objects of classes this reader does not rebuild: {', '.join(refused)}. "
            "If you trust the file, pass --allow-global NAME for each (they are kept as inert "
            "placeholders; no code from the file runs)"
        )
    if unknown:
        logger.info("keeping %s as inert placeholders", ", ".join(sorted(set(unknown))))
    with torch.serialization.safe_globals([(OpaqueObject, name) for name in unknown]):
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(checkpoint, dict) or "module" not in checkpoint:
        raise ValueError(f"{path} is not a DeepSpeed model-states file (no 'module' entry)")
    module = checkpoint["module"]
    bad = [key for key, value in module.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: 'module' entries that are not tensors: {bad[:5]}")
    return dict(module)
