"""``finetune evaluate`` on the three MedMNIST recipes: clean vs MedMNIST-C-corrupted test splits, with the
MedMNIST-C paper's summary (balanced error normalised to its AlexNet baseline) next to the paper's baselines.

    python -m benchmarks.robustness [--epochs 8,2,3] [--image-size 28] [--sets medmnistc]
                                    # -> benchmarks/results/robustness.json

Each recipe (``+medical=breast|blood|pneumonia``) is trained once with a CPU budget (the recipe's image size
and epochs replaced by ``--image-size`` / ``--epochs``; everything else as the recipe: augmentation, EMA,
tuned threshold, temperature scaling), then ``finetune evaluate run=<run> corruptions=<set> severity=all``.
The images are corrupted at their stored 28 px (the paper corrupts 224 px files), so the normalised errors
measure this protocol, not the paper's; the corruptions that do not fit a 28 px image are listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import MEDMNIST, REPO, RESULTS, write_result

RECIPES = ("breast", "blood", "pneumonia")
# our copy of PneumoniaMNIST: the train split lost 826 normal images (recipes/medical/README.md)
EXTRA = {"pneumonia": ["dataset.file=pneumoniamnist_reduced_train.npz"]}
FINETUNE = [sys.executable, "-m", "finetune"]


def _run(args: list[str], cwd: Path) -> float:
    """``finetune <args>`` in ``cwd``; its wall time (s). Raises with the end of stderr when it fails."""
    start = time.perf_counter()
    out = subprocess.run([*FINETUNE, *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"finetune {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - start


def recipe_robustness(recipe: str, epochs: int, image_size: int, sets: list[str], base: Path) -> dict:
    """Train ``recipe`` at the budget, evaluate it on each corruption set; the numbers of its metrics.json."""
    run = base / recipe
    train_s = _run(
        [
            f"+medical={recipe}",
            f"dataset.root={MEDMNIST}",
            *EXTRA.get(recipe, []),
            f"dataset.image_size={image_size}",
            f"schedule.epochs={epochs}",
            "trainer.progress_bar=false",
            "logger=csv",
            f"hydra.run.dir={run}",
        ],
        base,
    )
    evaluate_s = {s: _run(["evaluate", f"run={run}", f"corruptions={s}", "report=false"], base) for s in sets}
    metrics = json.loads((run / "metrics.json").read_text())
    out = {"recipe": recipe, "epochs": epochs, "image_size": image_size, "train_s": round(train_s, 1)}
    out["test"] = {k: metrics["test"][k] for k in ("acc", "balanced_acc", "auc", "ece") if k in metrics["test"]}
    for name in sets:
        out[name] = {"evaluate_s": round(evaluate_s[name], 1), **summary(metrics["robustness"][name])}
    return out


def summary(record: dict) -> dict:
    """The numbers of one ``robustness.<set>`` record of a metrics.json: clean, mean, per severity, mean accuracy
    per corruption, what was skipped and the paper's normalised errors (``paper``: be, rbe, per corruption)."""
    return {
        "clean": record["clean"],
        "mean": record["mean"],
        "by_severity": record["by_severity"],
        "acc_per_corruption": {c: _mean_acc(per.values()) for c, per in record["results"].items()},
        "skipped": record["skipped"],
        "paper": record.get("paper"),
    }


def _mean_acc(scores) -> float:
    """The mean accuracy over the severities a corruption was scored at (one not applicable to the images' size,
    e.g. BloodMNIST's bubble at severity 5 on 28 px, has none)."""
    accs = [s["acc"] for s in scores if s["acc"] is not None]
    return round(sum(accs) / len(accs), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="8,2,3", help="epochs of breast, blood, pneumonia")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--sets", default="medmnistc", help="comma-separated corruption sets")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args()
    epochs = dict(zip(RECIPES, map(int, args.epochs.split(","))))
    sets = args.sets.split(",")
    command = "python -m benchmarks.robustness " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        rows = {
            r: {"command": command, **recipe_robustness(r, epochs[r], args.image_size, sets, Path(tmp))}
            for r in args.recipes.split(",")
        }
    previous = RESULTS / "robustness.json"  # recipes measured by an earlier command are kept
    kept = json.loads(previous.read_text())["recipes"] if previous.is_file() else []
    merged = [row for row in kept if row["recipe"] not in rows] + list(rows.values())
    path = write_result(
        "robustness", {"cwd": str(REPO), "recipes": sorted(merged, key=lambda r: RECIPES.index(r["recipe"]))}
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
