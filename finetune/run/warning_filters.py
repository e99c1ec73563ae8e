"""The process-wide warning filters of our commands: warnings other libraries print for their own users that a
finetune user can do nothing about. Installed once at start-up by our entry points (the ``finetune`` command and
``python -m finetune``, the DDP worker), never at import: a program that imports finetune keeps its warnings.
A warning raised by one library call is silenced where it is made, in a ``warnings.catch_warnings()`` block."""

from __future__ import annotations

import warnings


def quiet_library_chatter() -> None:
    """Ignore the library warnings below in this process (installing them twice lists each once)."""
    # Lightning: our frozen stages are in eval mode on purpose (the BatchNorm policy, bn=frozen); it warns every phase.
    warnings.filterwarnings("ignore", r"Found \d+ module\(s\) in eval mode", UserWarning)
    # torch: Lightning's own pytree code uses the deprecated LeafSpec; nothing our users call or can change.
    warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)", FutureWarning)
    # Lightning: every phase's Trainer checkpoints into the run's one checkpoint directory, filled by the phase before.
    warnings.filterwarnings("ignore", r"Checkpoint directory .* exists and is not empty", UserWarning)
    # Lightning: our test/ values come from torchmetrics, synced across ranks already; the advice is for per-rank ones.
    warnings.filterwarnings("ignore", r"It is recommended to use `self.log\('test/", UserWarning)
    # torch: Lightning's all_gather (our rank-consistency check under DDP) calls a function torch deprecated.
    warnings.filterwarnings("ignore", r"torch.distributed.nn.functional.all_gather is deprecated", FutureWarning)
    # Lightning: the step-logging interval is clamped to the epoch's batches (ClampLogInterval) after this warning.
    warnings.filterwarnings(
        "ignore", r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning
    )
