"""What a search shows people: its best trial in one line at the end, float parameters to 3 significant
digits (the study and study.json keep them whole), a sweep_summary.md about 100 columns wide. A small real
Optuna study in memory; no training."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from finetune.training.search import best_text, short_keys, shown_params, shown_value
from finetune.training.search.sweeper import best_line, study_record
from finetune.training.sweep import write_summary

LR, DECAY, SMOOTHING = "schedule.lr", "schedule.phases.1.layer_decay", "loss.label_smoothing"  # the recipe's 3
TRIALS = [  # (lr, layer decay, label smoothing) -> the toy objective's value
    (0.0012520653814999472, 0.8, 0.1),
    (0.00068240784270988381, 0.6, 0.0),
    (0.012345678901234567, 1.0, 0.1),
]


def test_floats_show_3_significant_digits_and_keys_their_last_part_when_unambiguous():
    assert shown_value(0.0012520653814999472) == "0.00125"
    assert shown_value("0.0012520653814999472") == "0.00125"  # as an override holds it
    assert [shown_value(v) for v in (0.1, 0.0, 1e-05, 4, "4", "lora", True)] == [
        "0.1",
        "0",
        "1e-05",
        "4",
        "4",
        "lora",
        "True",
    ]
    assert short_keys([LR, DECAY, SMOOTHING]) == {LR: "lr", DECAY: "layer_decay", SMOOTHING: "label_smoothing"}
    both = ["schedule.phases.0.lr", "schedule.phases.1.lr", "seed"]
    assert short_keys(both) == {both[0]: both[0], both[1]: both[1], "seed": "seed"}  # ambiguous: in full
    assert shown_params({LR: 0.00068240784270988381, DECAY: 0.6}) == "lr=0.000682 layer_decay=0.6"
    assert best_text(3, 0.91234, "val/acc", {LR: 0.0123456}) == "trial 3: val/acc=0.9123 (lr=0.0123)"


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    """Three trials of the recipe's space on a toy objective (trial 2 is best)."""
    study = optuna.create_study(study_name="toy", direction="maximize")
    for lr, decay, smoothing in TRIALS:
        study.enqueue_trial({LR: lr, DECAY: decay, SMOOTHING: smoothing})

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float(LR, 1e-4, 3e-2, log=True)
        decay = trial.suggest_categorical(DECAY, [0.6, 0.8, 1.0])
        trial.suggest_categorical(SMOOTHING, [0.0, 0.1])
        return 0.5 + lr * 10 + decay / 10

    study.optimize(objective, n_trials=len(TRIALS))
    return study


def fake_sweep(sweep: Path, study: optuna.Study) -> None:
    """The sweep directory as a search leaves it: each trial's job (its overrides, metrics.json), study.json."""
    for trial in study.trials:
        (sweep / str(trial.number) / ".hydra").mkdir(parents=True)
        overrides = [f"{k}={v}" for k, v in trial.params.items()] + ["+classification=blood_search"]
        overrides += [f"search.trial={trial.number}"]
        (sweep / str(trial.number) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        test = {m: 0.8 for m in ("acc", "balanced_acc", "f1_macro", "acc_top5", "auc", "ece", "adaptive_ece")}
        metrics = {"test": test, "wall_time_s": 61.27, "checkpoint": {"monitor": "val/acc", "best": trial.value}}
        (sweep / str(trial.number) / "metrics.json").write_text(json.dumps(metrics))
    (sweep / "study.json").write_text(json.dumps(study_record(study, "journal:study.log", len(TRIALS))))


def test_the_search_ends_with_one_line_naming_its_best_trial(study, tmp_path):
    fake_sweep(tmp_path, study)
    assert best_line(study, tmp_path) == (
        "search: best trial 2: val/acc=0.7235 (lr=0.0123 layer_decay=1 label_smoothing=0.1), "
        f"run directory {tmp_path / '2'}"
    )
    empty = optuna.create_study(study_name="empty")
    assert best_line(empty, tmp_path) == "search: no trial of study 'empty' completed, so there is no best trial"


def test_the_summary_rounds_floats_names_keys_once_and_fits_100_columns(study, tmp_path):
    fake_sweep(tmp_path, study)
    write_summary(tmp_path)
    notes, table = (tmp_path / "sweep_summary.md").read_text().split("\n\n")
    assert "The study's best trial 2: val/acc=0.7235 (lr=0.0123 layer_decay=1 label_smoothing=0.1), run 2." in notes
    assert notes.count(DECAY) == 1 and f"layer_decay = {DECAY}" in notes
    assert "The other test metrics (test/balanced_acc, test/f1_macro, test/acc_top5, " in notes
    lines = table.splitlines()
    header = "| rank | run | status | state | lr | layer_decay | label_smoothing | val/acc | test/acc | time_s |"
    assert lines[0] == header
    assert lines[2] == "| 1 | 2 | finished | COMPLETE | 0.0123 | 1 | 0.1 | 0.7235 | 0.8000 | 61.3 |"
    assert lines[3].startswith("| 2 | 0 | finished | COMPLETE | 0.00125 | 0.8 | 0.1 |")
    assert max(len(line) for line in lines) <= 100
    # the machines' copies keep every digit
    assert json.loads((tmp_path / "study.json").read_text())["best"]["params"][LR] == 0.012345678901234567
    assert f"{LR}=0.012345678901234567" in (tmp_path / "sweep_summary.csv").read_text()
