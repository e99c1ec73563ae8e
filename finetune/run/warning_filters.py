"""The process-wide warning filters of our commands: warnings other libraries print for their own users that a
finetune user can do nothing about. Installed once at start-up by our entry points (the ``finetune`` command and
``python -m finetune``, the DDP worker), never at import: a program that imports finetune keeps its warnings.
A warning raised by one library call is silenced where it is made, in a ``warnings.catch_warnings()`` block.
Libraries that advise through ``logging`` (LitData) are quieted by a filter on the logger that speaks."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class DropMessages(logging.Filter):
    """A logging filter that drops the records whose message starts with ``pattern`` (a regular expression)."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


# LitData, on every StreamingDataset opened (once per split and worker): a max_cache_size under 25GB (ours:
# dataset.max_cache_size, 10GB by default, chosen by the user for their disk) is advised 25GB at WARNING level;
# a local pack is announced as read in place at INFO level (docs/streaming.md says so).
# Lightning, on every Trainer: tips for its cloud services (litlogger, litmodels).
LOGGED_CHATTER = {
    "litdata.streaming.dataset": DropMessages(
        r"The provided `max_cache_size` is less than 25GB|StreamingDataset POSIX-fast \w+: mmap chunks in place"
    ),
    "lightning.pytorch.utilities.rank_zero": DropMessages("💡 Tip: "),
}


@contextmanager
def dropped(logger: str, pattern: str) -> Iterator[None]:
    """Inside: the records of ``logger`` whose message starts with ``pattern`` (a regular expression) dropped."""
    drop = DropMessages(pattern)
    logging.getLogger(logger).addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger(logger).removeFilter(drop)


def quiet_library_chatter() -> None:
    """Ignore the library warnings below in this process (installing them twice lists each once)."""
    for name, drop in LOGGED_CHATTER.items():
        logging.getLogger(name).addFilter(drop)  # a filter already there is not added again
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
    # Lightning: a stream (dataset=streaming) has a length; LitData shards it between loader workers itself.
    warnings.filterwarnings("ignore", r"Your `IterableDataset` has `__len__` defined", UserWarning)
    # Lightning: the step-logging interval is clamped to the epoch's batches (ClampLogInterval) after this warning.
    warnings.filterwarnings(
        "ignore", r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning
    )


@contextmanager
def lightning_lines_dropped() -> Iterator[None]:
    """Inside: Lightning's INFO lines (``GPU available: …``, ``Trainer(limit_val_batches=1)`` was configured …,
    ``Trainer.fit`` stopped …) dropped and its warnings passed on to the root logger's handlers (the console and
    the run's finetune.log; where there are none, Python shows them on stderr), once: the console handler Lightning
    adds to its logger when imported before logging was set up is detached meanwhile. The ``finetune`` command and
    ``finetune.train`` both train inside; the logger is as it was afterwards. Lightning sets its logger up when it
    is imported: it is imported first."""
    import lightning.pytorch  # noqa: F401 - its import sets the level and handler this block replaces

    logger = logging.getLogger("lightning.pytorch")
    level, propagate = logger.level, logger.propagate
    own = [h for h in logger.handlers if type(h) is logging.StreamHandler]  # Lightning's, to stderr
    logger.setLevel(logging.WARNING)
    logger.propagate = True
    for handler in own:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.propagate = propagate
        for handler in own:
            logger.addHandler(handler)
