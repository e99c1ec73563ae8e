"""``trainer=fsdp``: Fully Sharded Data Parallel (Lightning's ``FSDPStrategy``, torch FSDP1) for models whose
parameters, gradients and optimizer state do not fit one GPU once replicated (docs/gpu.md).

- Each transformer block / CNN stage block is its own FSDP unit (its parameters are gathered only while it
  runs); ``use_orig_params=True`` keeps the original parameters visible, so frozen stages and adapters
  mix with trained ones in a unit and only the trainable ones reach the optimizer (``param_groups``).
- FSDP wraps a model's blocks in place, so each phase shards a copy of the model; when the phase ends the
  plain model takes the phase's weights from ``last.ckpt`` (a full state dict, written by rank 0): the next
  phase (another frozen set) and the test start from the plain model.
- Checkpoints hold the full state dict (``state_dict_type="full"``), so they resume and export as a
  one-process run's do. The test runs under DDP (inference needs no sharding).

Lightning refuses FSDP without CUDA (``accelerator`` must be a GPU); finetune refuses it earlier, in the
config checks (``finetune.training.validate``).
"""

from __future__ import annotations

import copy
import re
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp import MixedPrecision
from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

from finetune.models.freezing import FineTuneModel
from finetune.run.errors import FinetuneError
from finetune.run.records import model_state
from finetune.run.strategies import NO_GPU_VISIBLE, needs_cuda

# timm's repeated blocks: a ViT's blocks.<i>, a ConvNeXt / Swin / EfficientNet's stages.<i>.blocks.<j> or
# blocks.<i>.<j>, a ResNet's layer<i>.<j>
BLOCK_NAMES = re.compile(r"^(blocks\.\d+(\.\d+)?|stages\.\d+\.blocks\.\d+|layers\.\d+\.blocks\.\d+|layer\d+\.\d+)$")
MIN_UNIT_PARAMS = 1_000_000  # a model without such blocks: units of at least this many parameters


def block_classes(model: FineTuneModel) -> set[type[nn.Module]]:
    """The module classes of the backbone's repeated blocks (each instance becomes one FSDP unit)."""
    return {type(m) for name, m in model.timm_model.named_modules() if BLOCK_NAMES.match(name)}


def mixed_precision(precision: str) -> MixedPrecision | None:
    """FSDP's dtypes for ``trainer.precision``: a mixed precision computes in 16 bits but, unlike Lightning's
    FSDP plugin (16 bits throughout), reduces gradients and keeps buffers (BatchNorm statistics) in float32, so
    frozen statistics stay bit-identical. None: the plugin's (``32-true``, ``*-true``)."""
    halves = {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "16-mixed": torch.float16, "16": torch.float16}
    low = halves.get(str(precision))  # Lightning reads the short names "bf16" and "16" as the mixed ones
    if low is None:
        return None
    return MixedPrecision(param_dtype=low, reduce_dtype=torch.float32, buffer_dtype=torch.float32)


def fsdp_strategy(model: FineTuneModel, precision: str) -> FSDPStrategy:
    """Lightning's FSDP strategy for ``model``: a unit per block, original parameters, full checkpoints, and
    ``mixed_precision(precision)`` (Lightning lets a strategy's own setting override its precision plugin's)."""
    if not torch.cuda.is_available():
        raise FinetuneError(needs_cuda(NO_GPU_VISIBLE))
    policy = block_classes(model) or partial(size_based_auto_wrap_policy, min_num_params=MIN_UNIT_PARAMS)
    return FSDPStrategy(
        auto_wrap_policy=policy,
        use_orig_params=True,
        state_dict_type="full",
        mixed_precision=mixed_precision(precision),
    )


def shard_a_copy(task: L.LightningModule) -> None:
    """The phase's LightningModule trains a copy of its ``model`` (FSDP wraps the copy's blocks in place)."""
    task.model = copy.deepcopy(task.model)


def take_phase_weights(model: FineTuneModel, run_dir: Path) -> None:
    """The plain ``model`` takes the weights the phase ended with (``last.ckpt``, every rank reads it)."""
    state = model_state(run_dir / "checkpoints" / "last.ckpt")
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
