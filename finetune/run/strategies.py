"""The ``trainer.strategy`` values finetune runs (Lightning knows more: ``ddp_spawn``, ``fsdp_cpu_offload``, …,
which bypass finetune's launcher and sharding) and the one predicate every layer asks. No torch import."""

from __future__ import annotations

FSDP = "fsdp"
STRATEGIES = ("auto", "ddp", FSDP)  # trainer=default, trainer=ddp, trainer=fsdp
STRATEGY_HINT = (
    "auto: one process (trainer=default), ddp: a process per device (trainer=ddp), fsdp: sharded over CUDA GPUs "
    "(trainer=fsdp)"
)
NO_GPU_VISIBLE = "no NVIDIA GPU is visible here"


def is_fsdp(strategy: object) -> bool:
    """``trainer.strategy`` shards the model (``trainer=fsdp``)."""
    return str(strategy) == FSDP


def is_distributed(strategy: object) -> bool:
    """``trainer.strategy`` runs a process per device (``trainer=ddp`` or ``trainer=fsdp``)."""
    return str(strategy) in ("ddp", FSDP)


def needs_cuda(why: str) -> str:
    """The one line refusing ``trainer=fsdp`` on a machine or accelerator without CUDA (``why``)."""
    return f"trainer=fsdp needs CUDA GPUs ({why}); on CPU use trainer=ddp"
