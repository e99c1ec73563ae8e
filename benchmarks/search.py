"""The search of issue #28: today's 8-trial search against 16 trials on 2 workers sharing one study, pruning on.

Per dataset, two sides, each the ``finetune -m`` command a user types (``hydra/sweeper=search``, Optuna 5):

- *today*: one worker, ``n_trials=8``, ``pruner.kind=none``, torch's default threads (every core). The search
  as it was (hydra-optuna-sweeper with optuna 2.10, its study in memory) is gone with its ``optuna<3`` pin;
  this side keeps its shape on the new sweeper: Optuna 5's TPE with the recipe's seed (0) and
  ``n_startup_trials``, the study in a journal file nobody shares.
- *new*: ``n_trials=16``, two ``finetune -m`` processes started together with the same ``hydra.sweep.dir``
  (one study in ``<sweep dir>/study.log``), ``OMP_NUM_THREADS=1`` each, the recipe's median pruner.

Each side: the study's best trial (its validation score, the one that picked its checkpoint: val selects),
that trial's test metrics (reported, never used to select), the wall time from launch until every worker has
exited, the trials complete / pruned / failed and the epochs trained over all trials; per dataset the ratio of
wall times new / today, both measured in this run, one after the other. Training is seeded (``seed=0``).

Datasets: digits, the recipe ``classification/digits_search`` as is; BloodMNIST (``medical/blood_search``):
at its size (128 px, every batch, probe + 3 epochs of ~5 min each on 2 cores) one trial takes ~20 min, so a
cheaper variant runs (``DATASETS``): 64 px, probe + 2 epochs, 5% of the training batches per epoch, half of
val and of test (their first batches, in split order). At these sizes a trial's time goes to per-image
transforms, not convolutions (32 px measured no faster than 64 px): only fewer images make it cheaper.
All outputs go to a temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import MEDMNIST, RESULTS, environment, write_result

DATASETS = {
    "digits": (["+classification=digits_search"], "classification/digits_search as is"),
    "bloodmnist": (
        [
            "+medical=blood_search",
            f"dataset.root={MEDMNIST}",
            "dataset.image_size=64",
            "schedule.epochs=2",
            "trainer.limit_train_batches=0.05",
            "trainer.limit_val_batches=0.5",
            "trainer.limit_test_batches=0.5",
        ],
        "medical/blood_search shrunk: 64 px (recipe 128), probe + 2 epochs (recipe probe + 3), per epoch 19 of "
        "374 training batches (608 images), val on 27 of 54 batches (864 of 1712 images), test on 54 of 107 "
        "batches (1728 of 3421 images)",
    ),
}
SIDES = {"today": (1, 8, "none"), "new": (2, 16, "median")}  # side: workers, n_trials, pruner (median: the recipe's)
NO_PRUNER = [  # the median pruner's keys go with it (NopPruner takes no arguments)
    "hydra.sweeper.pruner.kind=none",
]
COMMON = [
    "seed=0",
    "trainer.progress_bar=false",
]
QUICK_TRIALS = 2
QUICK = [  # seconds: QUICK_TRIALS trials per side, 32 px, one batch per split, one epoch per phase
    "dataset.image_size=32",
    "schedule.epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]
STATES = {"complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}  # our names: Optuna's TrialState
TEST_KEYS = ("acc", "balanced_acc", "f1_macro", "auc")


def _search(args: list[str], workers: int, sweep: Path) -> float:
    """``finetune -m <args>`` in ``workers`` processes started together on ``sweep``; wall seconds until all exit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if workers > 1:
        env["OMP_NUM_THREADS"] = "1"
    else:
        env.pop("OMP_NUM_THREADS", None)  # one worker: torch's default threads, as a user runs it
    command = [sys.executable, "-m", "finetune", "-m", *args, f"hydra.sweep.dir={sweep}"]
    start = time.perf_counter()
    logs = [(sweep.parent / f"{sweep.name}.worker{i}.log").open("w") for i in range(workers)]
    procs = [subprocess.Popen(command, cwd=sweep.parent, env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - start
    for log, code in zip(logs, codes):
        log.close()
        if code:
            raise RuntimeError(f"{' '.join(command)} failed ({code}):\n{Path(log.name).read_text()[-3000:]}")
    return wall


def _study_summary(sweep: Path) -> dict:
    """Trial counts, epochs trained, the best trial's val score and params, and its test metrics."""
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep / "study.log")))
    study = optuna.load_study(study_name=sweep.name, storage=storage)  # the sweep dir's name
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    best = study.best_trial
    metrics = json.loads((sweep / str(best.number) / "metrics.json").read_text())
    return {
        "trials": {k: states.count(state) for k, state in STATES.items()},
        "epochs_trained": sum(len(t.intermediate_values) for t in trials),
        "best_val": {
            "trial": best.number,
            "monitor": metrics["checkpoint"]["monitor"],
            "value": round(best.value, 4),
            "params": best.params,
        },
        "test_of_best": {k: round(metrics["test"][k], 4) for k in TEST_KEYS if k in metrics["test"]},
        "trials_span_s": round(
            (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds(), 1
        ),
    }


def measure(name: str, quick: bool = False, tmp: Path | None = None) -> dict:
    """Both sides on dataset ``name`` (today first), their summaries and the ratio of wall times."""
    recipe, variant = DATASETS[name]
    if quick:  # QUICK's values replace the variant's (an override given twice is ambiguous)
        recipe = [o for o in recipe if o.split("=")[0] not in {q.split("=")[0] for q in QUICK}]
    row: dict = {"variant": variant + (" (quick: 2 trials, 32 px, 1 batch)" if quick else "")}
    with tempfile.TemporaryDirectory(prefix="finetune-search-bench-", dir=tmp) as out:
        for side, (workers, n_trials, pruner) in SIDES.items():
            n_trials = QUICK_TRIALS if quick else n_trials
            overrides = [f"hydra.sweeper.n_trials={n_trials}", *(NO_PRUNER if pruner == "none" else [])]
            args = [*recipe, *overrides, *COMMON, *(QUICK if quick else [])]
            sweep = Path(out) / f"{name}_{side}"
            load = [round(x, 2) for x in os.getloadavg()]
            wall = _search(args, workers, sweep)
            row[side] = {
                "workers": workers,
                "n_trials": n_trials,
                "pruner": pruner,
                "threads_per_worker": 1 if workers > 1 else "torch default (all cores)",
                "wall_s": round(wall, 1),
                "load_average_before_after": [load, [round(x, 2) for x in os.getloadavg()]],  # a shared machine
                **_study_summary(sweep),
                "overrides": args,
            }
    row["ratio_wall_new_over_today"] = round(row["new"]["wall_s"] / row["today"]["wall_s"], 3)
    return row


NOTES = [
    "today = the 8-trial search of the recipe, 1 worker, no pruning. The old sweeper (hydra-optuna-sweeper, "
    "optuna 2.10, in-memory study) is gone with its optuna<3 pin, so this side runs on finetune's sweeper: "
    "Optuna 5's TPE with the recipe's seed 0 and n_startup_trials (trial n's sampler seeded 0 + n), its "
    "study in a journal file; torch's default threads (all cores).",
    "new = 16 trials, 2 `finetune -m` processes started together with the same hydra.sweep.dir (one study in "
    "its study.log), OMP_NUM_THREADS=1 each, the recipe's median pruner.",
    "best val = the study's best trial by its validation score (val selects); test = that trial's test "
    "metrics, reported, never used to select.",
    "wall = launch until every worker exited (a worker with no trial left looks every 5 s whether the "
    "other's last trial ended); the sweeper's default heartbeat settings; seed=0.",
    "epochs trained = validation epochs reported to the study, over all trials (pruned trials stop early).",
    "A shared machine (2 cores): the 1-min load average before -> after each side is recorded; today's single "
    "worker runs 2 torch threads, which other jobs' load slows more than two 1-thread workers, so the wall "
    "ratio depends on the load.",
]


def main(quick: bool = False, out_dir: Path = RESULTS, names: tuple[str, ...] = tuple(DATASETS)) -> dict:
    env = environment()  # the load average before the searches
    rows = {name: measure(name, quick) for name in names if name == "digits" or MEDMNIST.is_dir()}
    for name, row in rows.items():
        for side in SIDES:
            r = row[side]
            print(
                f"{name} {side}: best {r['best_val']['monitor']} {r['best_val']['value']} (trial "
                f"{r['best_val']['trial']}), its test acc {r['test_of_best'].get('acc')}, {r['wall_s']} s, "
                f"trials {r['trials']}"
            )
        print(f"{name}: wall new / today {row['ratio_wall_new_over_today']}")
    write_result("search", {"rows": rows, "notes": NOTES, "environment_at_start": env}, out_dir)
    return rows


if __name__ == "__main__":
    main()
