"""``finetune evaluate run=<run dir | export> corruptions=<medmnistc | imagenet-c> [severity=all | 1..5 |
1,5] [only=<corruption,...>] [split=test] [seed=0] [data=<run dir>] [report=true] [out=<file.json>]``

Evaluates a trained model on corrupted copies of a split of its dataset: each image is decoded as in
training, corrupted at its stored size, then preprocessed as in training (the reference preprocessing).
Per corruption × severity: the task's test metrics (classification: acc, balanced_acc, f1_macro, auc)
and the calibration error (ece) of the probabilities the run decides with (after its temperature), their
means, and for ``corruptions=medmnistc`` the MedMNIST-C paper's summary (balanced error normalised to its
AlexNet baseline; needs severity=all).

* ``corruptions=medmnistc``: the MedMNIST-C corruptions of the run's MedMNIST dataset (the ``medmnistc``
  package and ImageMagick's MagickWand library); ``corruptions=imagenet-c``: ImageNet-C-style corruptions
  from albumentations (any dataset).
* A finished run directory (one without metrics.json yet is refused: resume it first): the numbers go
  into its metrics.json under ``robustness.<set>`` (other keys kept; a ``resume_finished`` re-test keeps
  them while it decides as before: one that changes the threshold, temperature or TTA drops them) and
  its report.html gets a Robustness section (``report=false``: not rewritten); the run's lock is held.
* Without a test split the dataset's ``split=test`` is its val split (``test_is_val`` in the record).
* An export (any format ``finetune predict`` opens): pass ``data=<run dir>`` whose dataset to use; the
  numbers go to ``out`` (default ``robustness.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.commands.args import existing_path, parse_args, parse_flag, run_command
from finetune.data.corruptions import SEVERITIES
from finetune.run.errors import FinetuneError
from finetune.run.rundir import is_run

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from finetune.data.corruptions import CorruptionSet
    from finetune.training.robustness import EvaluateOptions

OPTIONS = {
    "run": None,
    "corruptions": None,
    "severity": "all",
    "only": None,
    "split": "test",
    "seed": "0",
    "data": None,
    "report": "true",
    "out": None,
}


def main(argv: Sequence[str] | None = None) -> int:
    """``finetune evaluate``: exit 0, or 2 with one ``finetune: error:`` line."""
    return run_command(_evaluate_command, __doc__, argv)


def parse_severities(value: str) -> tuple[int, ...]:
    """``all`` → 1..5; ``3`` or ``1,5`` → those, sorted; FinetuneError otherwise."""
    if value.strip().lower() == "all":
        return SEVERITIES
    try:
        chosen = sorted({int(v) for v in value.split(",")})
    except ValueError:
        chosen = []
    if not chosen or not set(chosen) <= set(SEVERITIES):
        raise FinetuneError(f"severity={value!r}: use all, one of 1..5, or several such as 1,5")
    return tuple(chosen)


def _evaluate_command(argv: list[str]) -> None:
    args = parse_args(argv, OPTIONS, ["run", "corruptions"], "finetune evaluate")
    severities, report = parse_severities(args["severity"]), parse_flag(args["report"], "report")
    try:
        seed = int(args["seed"])
    except ValueError:
        raise FinetuneError(f"seed={args['seed']!r}: use a whole number") from None
    only = tuple(name.strip() for name in (args["only"] or "").split(",") if name.strip())
    path = existing_path(args["run"], "run", "run directory, checkpoint or export")
    run = is_run(path)
    if not run and not args["data"]:
        raise FinetuneError(
            f"run={path} is an export, which records no dataset: add data=<run dir> (the run whose dataset to use)"
        )
    from finetune.run.records import find_checkpoint, run_config

    run_dir = find_checkpoint(path)[0] if run else None
    if run_dir and not (run_dir / "metrics.json").is_file():  # no temperature, threshold, test yet
        raise FinetuneError(f"run={path} has not finished (no metrics.json): resume it first, then evaluate")
    from finetune.data.corruptions import CORRUPTION_SETS

    CORRUPTION_SETS.get(args["corruptions"])  # a misspelt set: refused before torch is imported
    from finetune.training.robustness import EvaluateOptions, chosen_corruptions

    options = EvaluateOptions(args["corruptions"], severities, only, args["split"], seed)
    data_run = Path(args["data"]).expanduser() if args["data"] else path
    cfg = run_config(data_run)
    chosen = chosen_corruptions(options, cfg.dataset.get("name"))  # refused before any model
    from finetune.export.loading import load_model
    from finetune.run.lock import run_lock
    from finetune.tasks.registry import TASKS

    if run_dir is None:
        record = _evaluate(load_model(path, tasks=TASKS), data_run, cfg, chosen, options)
        out = Path(args["out"] or "robustness.json").expanduser()
        from finetune.run.artifacts import write_json

        write_json(out, {"model": str(path), **record})
        print(f"robustness written to {out}")
        return
    with run_lock([run_dir], "finetune evaluate"):
        model = load_model(path, tasks=TASKS)
        from finetune.training.robustness import write_robustness

        record = _evaluate(model, data_run, cfg, chosen, options)
        write_robustness(run_dir / "metrics.json", {"model": str(path), **record})
        print(f"robustness written to {run_dir / 'metrics.json'} (robustness.{options.corruptions})")
        if report:
            from finetune.report.html import write_report

            print(f"report written to {write_report(run_dir, model.task)}")


def _evaluate(
    model, data_run: Path, cfg: DictConfig, chosen: tuple[CorruptionSet, list[str]], options: EvaluateOptions
) -> dict:
    """Evaluate ``model`` (an ``export.loading.LoadedExport``) on the split of ``data_run``'s dataset (its config
    ``cfg``) with the ``chosen`` corruptions; print the table. Without a test split the dataset's ``test`` is its
    val split: the record says so (``test_is_val``)."""
    from finetune.tasks.registry import get_task
    from finetune.training.robustness import evaluate_robustness

    data = get_task(cfg.task).data_module(cfg)
    if list(data.info.class_names) != list(model.class_names):
        raise FinetuneError(
            f"data={data_run}: its classes {list(data.info.class_names)} are not the model's {model.class_names}"
        )
    if options.split not in data.splits:
        raise FinetuneError(f"split={options.split!r}: use one of {', '.join(data.splits)}")
    samples = data.splits[options.split]
    record = evaluate_robustness(model, model.task, samples, data.info.image_channels, *chosen, options)
    record["test_is_val"] = options.split == "test" and data.test_is_val
    print_table(record)
    return record


def print_table(record: dict) -> None:
    """Accuracy per corruption and severity, the means, ECE, and the paper's summary where there is one."""
    from rich.table import Table

    from finetune.report.page import evaluated_split
    from finetune.run.console import console

    severities = record["severities"]
    table = Table(title=f"{record['corruptions']} on {evaluated_split(record)} ({record['images']} images): accuracy")
    for column in ("corruption", *(f"s{s}" for s in severities), "mean", "ECE"):
        table.add_column(column, justify="left" if column == "corruption" else "right")

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    clean = record["clean"]
    table.add_row("clean", *(cell(clean["acc"]) for _ in severities), cell(clean["acc"]), cell(clean["ece"]))
    for name, per in record["results"].items():  # a severity not applicable to the images: "-"
        accs = [per[str(s)]["acc"] for s in severities]
        eces = [per[str(s)]["ece"] for s in severities]
        table.add_row(name, *map(cell, accs), cell(_mean(accs)), cell(_mean(eces)))
    if record["results"]:
        means = [record["by_severity"][str(s)]["acc"] for s in severities]
        table.add_row("mean", *map(cell, means), cell(record["mean"]["acc"]), cell(record["mean"]["ece"]))
    console.print(table)
    for name, why in record["skipped"].items():
        console.print(f"skipped {name}: {why}")
    paper = record.get("paper") or {}
    if "be" in paper:
        console.print(
            f"MedMNIST-C summary: balanced error clean {paper['clean_balanced_error']:.3f}, "
            f"BE (normalised to AlexNet) {paper['be']:.3f}, rBE {paper['rbe']:.3f}"
            + ("" if paper["complete"] else " (not every corruption of the paper)")
        )
    elif paper:
        console.print(f"MedMNIST-C summary: {paper['note']}")


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None
