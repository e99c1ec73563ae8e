"""``BestWeights`` (``checkpoints.keep=none``) keeps the epoch ``best.ckpt`` would: the first validation, then
each strictly better one (NaN the worst), across phases; a copy, written on demand as a checkpoint that a
re-test and ``finetune export`` read. A stub trainer and module: no Lightning fit."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from finetune.run.errors import FinetuneError
from finetune.run.records import check_checkpoint, model_state
from finetune.run.schedule import PHASE_KEY
from finetune.training.best_weights import BestWeights, monitor_mode

NAN = math.nan


class Stub(L.LightningModule):
    """One parameter and one buffer; the phase index in its checkpoints, as ``PhasedTask`` writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))
        self.register_buffer("seen", torch.zeros(1))
        self.phase = 0

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[PHASE_KEY] = self.phase


def validate(best: BestWeights, module: Stub, scores: list[float], epochs_per_phase: int = 2) -> None:
    """Validation ``i`` scores ``scores[i]`` with every weight equal to ``i``; phases of ``epochs_per_phase``."""
    for index, score in enumerate(scores):
        module.phase, epoch = divmod(index, epochs_per_phase)
        with torch.no_grad():
            module.weight.fill_(index)
            module.seen.fill_(index)
        trainer = SimpleNamespace(
            sanity_checking=False,
            callback_metrics={best.monitor: torch.tensor(score)},
            world_size=1,
            callbacks=[],
            current_epoch=epoch,
        )
        best.on_validation_end(trainer, module)


def kept_index(best: BestWeights) -> int:
    assert best.state is not None
    assert torch.equal(best.state["seen"], best.state["weight"][:1])
    return int(best.state["weight"][0])


@pytest.mark.parametrize(
    ("monitor", "scores", "index", "score"),
    [
        ("val/acc", [0.5, 0.3, NAN, 0.4, 0.5], 0, 0.5),  # the first, never beaten; the tie in phase 3 is not better
        ("val/loss", [0.5, 0.3, NAN, 0.4, 0.3], 1, 0.3),  # the lowest loss; its tie is not better either
        ("val/acc", [NAN, 0.1, 0.4, NAN], 2, 0.4),  # a first NaN is kept, then any number beats it
        ("val/loss", [NAN, 0.9, 0.4, NAN], 2, 0.4),
    ],
    ids=["max", "min", "nan_first_max", "nan_first_min"],
)
def test_the_best_epoch_across_phases_is_kept(monitor, scores, index, score):
    best, module = BestWeights(monitor), Stub()
    validate(best, module, scores)
    assert kept_index(best) == index
    assert float(best.best_model_score) == pytest.approx(score)
    assert best.checkpoint[PHASE_KEY] == index // 2 and best.checkpoint["epoch"] == index % 2


def test_the_kept_state_is_a_cpu_copy_and_no_score_keeps_nothing():
    best, module = BestWeights("val/loss"), Stub()
    best.on_validation_end(SimpleNamespace(sanity_checking=True), module)  # a sanity check never counts
    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={}, world_size=1, callbacks=[], current_epoch=0)
    best.on_validation_end(trainer, module)  # the monitor was not logged
    assert best.state is None and best.best_model_score is None
    validate(best, module, [0.7])
    with torch.no_grad():
        module.weight.add_(5.0)
        module.seen.add_(5.0)
    assert kept_index(best) == 0 and best.state["weight"].device.type == "cpu"


def test_save_writes_a_checkpoint_a_retest_and_export_read(tmp_path):
    best, module = BestWeights("val/loss"), Stub()
    validate(best, module, [0.5, 0.2, 0.3])
    path = best.save(tmp_path / "checkpoints" / "best.ckpt")
    with pytest.raises(FinetuneError, match="holds weights only .* training cannot continue from it"):
        check_checkpoint(path)  # an unfinished run's resume would train on from it
    (tmp_path / "metrics.json").write_text("{}")
    check_checkpoint(path, {"weight": (3,), "seen": (1,)})  # what `finetune resume=… resume_finished=true` checks
    state = model_state(path)
    assert torch.equal(state["weight"], torch.full((3,), 1.0))
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved[PHASE_KEY] == 0 and saved["epoch"] == 1
    assert float(saved["callbacks"]["ModelCheckpoint"]["best_model_score"]) == pytest.approx(0.2)
    assert [p.name for p in path.parent.iterdir()] == ["best.ckpt"]  # written atomically: no temporary left


def test_monitor_mode():
    assert [monitor_mode(m) for m in ("val/loss", "loss", "val/acc", "val/dice")] == ["min", "min", "max", "max"]
