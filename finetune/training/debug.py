"""``trainer=debug`` (``trainer.debug=true``): a smoke run of the whole pipeline, each phase one epoch of a few
batches (``run.schedule.DEBUG_EPOCHS``, ``trainer.limit_*_batches``); what the console and metrics.json say of it."""

from __future__ import annotations

from omegaconf import DictConfig

from finetune.run.schedule import DEBUG_EPOCHS

NOTE = "metrics are not meaningful"


def debug_record(trainer: DictConfig) -> dict:
    """metrics.json's ``debug`` entry (the epochs and batches of each phase, the note), or nothing."""
    if not trainer.debug:
        return {}
    batches = {split: _batches(trainer[f"limit_{split}_batches"]) for split in ("train", "val", "test")}
    return {"debug": {"epochs_per_phase": DEBUG_EPOCHS, "batches": batches, "note": NOTE}}


def debug_line(trainer: DictConfig) -> str | None:
    """The console line of a debug run, or None."""
    if not trainer.debug:
        return None
    batches = debug_record(trainer)["debug"]["batches"]
    return (
        f"debug run: {DEBUG_EPOCHS} epoch of {batches['train']} batches per phase, {batches['val']} val and "
        f"{batches['test']} test batches — {NOTE}"
    )


def _batches(limit: int | float | None) -> int | float | str:
    return "all" if limit is None else limit
