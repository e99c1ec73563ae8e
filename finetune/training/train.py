"""One ``train()`` for every task: build the pieces, run the phases, test, write the run directory.

Everything task-specific is asked of the config's Task (``finetune.tasks``); this module never
asks which task it runs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import timm
import torch
from omegaconf import DictConfig, OmegaConf

from finetune.data.transforms import Preprocessing, gray_preprocessing
from finetune.export.parity import PARITY_IMAGES
from finetune.export.tensors import embedded_metadata
from finetune.export.writing import ExportResult, export_run
from finetune.export.writing import print_results as print_exports
from finetune.models.freezing import FineTuneModel, FreezeError, frozen_stages
from finetune.models.saved_runs import run_data_record
from finetune.models.weights import WeightsRecord, forget_announced, resolve_weights
from finetune.report.html import write_report
from finetune.report.page import tested_split
from finetune.report.plots import epoch_history, plot_confusion, plot_curves
from finetune.run.artifacts import atomic_path, json_text, write_json, write_text
from finetune.run.console import log_file_copy
from finetune.run.errors import FinetuneError, RunInterrupted
from finetune.run.rundir import log_attempts
from finetune.run.schedule import Phase
from finetune.run.task import Task
from finetune.training.best_weights import BestWeights
from finetune.training.debug import debug_line, debug_record
from finetune.training.display import console, print_results
from finetune.training.distributed import is_global_zero
from finetune.training.input_warnings import advise
from finetune.training.interrupts import Progress, interruptible, log_to_run_file
from finetune.training.phases import (
    Best,
    PlannedPhase,
    checkpoints_keep,
    finished_run,
    make_trainer,
    run_phases,
    tested_state,
)
from finetune.training.plan import print_plan
from finetune.training.tracking import Tracking, tracked
from finetune.training.validate import validate
from finetune.version import __version__

log = logging.getLogger(__name__)
KEEP_NONE = (
    "checkpoints.keep=none: no checkpoint is written; the best epoch's weights are kept in memory for the test, "
    "exports and report; the finished run cannot be resumed, re-tested or exported again (its exports stay)"
)
WHOLE_HEAD = "head = whole model"  # every tensor was trained: the head export holds them all
TEST_IS_VAL = (
    "no test split (no test/ folder, test rows or dataset.test_fraction): testing on the val split, which also "
    "picked the checkpoint"
)


@dataclasses.dataclass
class Built:
    """What a run trains: its phases (with the stages each freezes), weights record, data and model."""

    phases: list[Phase]
    plan: list[PlannedPhase]
    record: WeightsRecord
    data: L.LightningDataModule
    model: FineTuneModel


def build(task: Task, cfg: DictConfig, data: L.LightningDataModule | None = None) -> Built:
    """Validate ``cfg``, resolve the weights, scan the data (unless ``data`` is the module already built from
    ``cfg``) and build the model (on the meta device for ``plan=true``: nothing is loaded), with the data's
    preprocessing set from the backbone."""
    phases = validate(cfg, task)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    record = resolve_weights(
        cfg.backbone.name, cfg.backbone.weights, cfg.backbone.pretrained, preprocessing=preprocessing_overrides(cfg)
    )
    data = data if data is not None else task.data_module(cfg)
    num_classes = data.info.num_classes
    if cfg.plan:
        with torch.device("meta"):
            model = task.build_model(cfg, dataclasses.replace(record, source="random"), data.in_chans, num_classes)
    else:
        model = task.build_model(cfg, record, data.in_chans, num_classes)
        task.prepare(cfg, model, data)
    plan = [PlannedPhase(p, frozen_for(model.stage_map, p, cfg.backbone.name)) for p in phases]
    data.set_preprocessing(model_preprocessing(model.timm_model, task.input_size(cfg), data.in_chans))
    advise(model, data)  # warnings for legal but unwise inputs (tiny image size, small val/test)
    return Built(phases, plan, record, data, model)


def train(task: Task, cfg: DictConfig, run_dir: Path, resume_from: Path | None = None) -> dict:
    """Fine-tune ``task`` as ``cfg`` says; write everything to ``run_dir``; return the metrics written.
    SIGINT, SIGTERM or SIGUSR1 end it with one line and exit code 130 / 143 (``training.interrupts``)."""
    forget_announced()  # this run's log names its weights, as the process's first run's did
    with interruptible(run_dir) as progress, tracked(cfg, run_dir) as tracking, log_file_copy():
        return train_run(task, cfg, run_dir, resume_from, progress, tracking)


def train_run(
    task: Task, cfg: DictConfig, run_dir: Path, resume_from: Path | None, progress: Progress, tracking: Tracking
) -> dict:
    """``train`` with its interrupt handlers installed (``progress`` learns the phase names) and its tracking
    (MLflow / W&B run, TensorBoard hparams: ``training.tracking``), started once the run directory holds its config."""
    started = time.perf_counter()
    built = build(task, cfg)
    phases, plan, record, data, model = built.phases, built.plan, built.record, built.data, built.model
    progress.phases = [p.name for p in phases]
    progress.writes_checkpoints = checkpoints_keep(cfg) != "none"
    if is_global_zero() and cfg.trainer.debug:
        console.print(debug_line(cfg.trainer))
    if cfg.plan:
        print_plan(cfg, model, data, plan, record)
        return {}

    finished = finished_run(run_dir, plan) if resume_from is not None else None  # a re-test: nothing trains
    # a re-test keeps the monitor that picked its checkpoint (threshold=, which monitor=auto follows, may change)
    monitor = (finished or {}).get("checkpoint", {}).get("monitor") or task.monitor(cfg, data)
    if finished is not None:  # config.yaml then says how the tested checkpoint was picked (not monitor=auto's pick)
        cfg.monitor = monitor.removeprefix("val/")
    if is_global_zero() and checkpoints_keep(cfg) == "none":
        console.print(KEEP_NONE)
    if is_global_zero():
        write_run_record(cfg, run_dir, record.to_dict(), run_data_record(task, cfg, data))
        tracking.start()
    make_module = partial(task.lightning_module, cfg, model, data)
    checkpoint, rank_checksums = run_phases(
        cfg,
        run_dir,
        model,
        data,
        plan,
        make_module,
        monitor,
        resume_from,
        retest=finished is not None,
        mixes_inputs=task.mixes_inputs(cfg),
    )
    keep = checkpoints_keep(cfg)
    state, tested = tested_state(run_dir, checkpoint, keep)
    module = make_module()
    module.load_state_dict(state)
    tester = make_trainer(cfg, run_dir, "test", 1, [])
    module.to(tester.strategy.root_device)  # fit() hands the model back on the CPU
    task.before_test(cfg, module, data)
    if data.test_is_val and is_global_zero():
        log.warning(TEST_IS_VAL)
    tester.test(module, datamodule=data, verbose=False)
    if not is_global_zero():
        return {}
    with weights_kept_on_failure(checkpoint, run_dir):  # keep=none: the tested weights survive a failure
        results = write_results(
            run_dir,
            module.test_results,
            data.info.class_names,
            phases,
            finished["wall_time_s"] if finished else time.perf_counter() - started,
            {"param_checksums_per_rank": rank_checksums},
            checkpoint,
            tested,
            task.test_decisions,
            {"test_is_val": data.test_is_val, **task.test_record(cfg, module, data), **debug_record(cfg.trainer)},
        )
        print_results(results, run_dir)
        # The small head export needs the pretrained backbone to pin against; random init exports all.
        default_export = "head" if record.source != "random" else "safetensors"
        exports = export_run(
            run_dir,
            task,
            (default_export,),
            overwrite=resume_from is not None,
            parity_images=task.parity_images(data, PARITY_IMAGES),
            model=module.model.cpu() if keep == "none" else None,  # no checkpoint: the tested weights, exported
        )
        module.to(tester.strategy.root_device)
        print_exports([named_for_content(e) for e in exports], console)
        task.after_test(cfg, module, data, run_dir)
        console.print(f"report: {write_report(run_dir, task, data=data, model=module.model)}")
        tracking.finish(results)
    return results


@contextmanager
def weights_kept_on_failure(best: Best, run_dir: Path) -> Iterator[None]:
    """``checkpoints.keep=none`` holds the tested weights in memory only: when anything after the test fails
    (an export's parity gate, a signal while exporting or reporting), they are written to
    ``checkpoints/best.ckpt`` first (``BestWeights.save``), and the error or interrupt line says so."""
    try:
        yield
    except BaseException as err:
        if not isinstance(best, BestWeights):
            raise
        finished = (run_dir / "metrics.json").is_file()
        path = best.save(run_dir / "checkpoints" / "best.ckpt")
        saved = f"checkpoints.keep=none: the tested weights were saved to {path}"
        if isinstance(err, RunInterrupted):  # its line already says how to go on
            if err.message:
                log_to_run_file(run_dir, saved)
            raise RunInterrupted(err.message and f"{err.message}; {saved}", err.signum) from None
        retest = f"; `finetune resume={run_dir} resume_finished=true` tests the run again"
        note = f"{saved} (`finetune export run={run_dir}` exports them{retest if finished else ''})"
        if isinstance(err, FinetuneError):
            raise type(err)(f"{err}; {note}") from None
        err.add_note(note)
        raise


def named_for_content(result: ExportResult) -> ExportResult:
    """A ``head`` export in which every tensor differs from the pretrained backbone (no stage stayed frozen) is
    the whole model: named so in the exports table (it still loads as a head export, pinned to the backbone)."""
    if result.format == "head" and embedded_metadata(result.path).get("frozen_tensors") == 0:
        return dataclasses.replace(result, format=WHOLE_HEAD)
    return result


def preprocessing_overrides(cfg: DictConfig) -> dict:
    """``backbone.preprocessing`` keys the user set (mean, std, …), as the weights resolver takes them."""
    pre = cfg.backbone.preprocessing
    return {k: (tuple(v) if k != "interpolation" else v) for k, v in pre.items() if v is not None}


def frozen_for(stage_map, phase: Phase, name: str) -> tuple[str, ...]:
    """Stages ``phase`` freezes; a depth that does not fit names the phase."""
    try:
        return frozen_stages(stage_map, phase.freeze, name)
    except FreezeError as err:
        raise FinetuneError(f"phase {phase.name!r}: {err}") from None


def model_preprocessing(backbone: torch.nn.Module, image_size: int | None, in_chans: int) -> Preprocessing:
    """What the backbone's pretrained config expects (timm ``resolve_data_config``), at ``image_size``."""
    data_cfg = timm.data.resolve_data_config(model=backbone)
    _, height, width = data_cfg["input_size"]
    size = (image_size, image_size) if image_size else (height, width)
    mean, std = tuple(data_cfg["mean"]), tuple(data_cfg["std"])
    if in_chans == 1:
        mean, std = gray_preprocessing(mean, std)
    try:
        return Preprocessing(size=size, mean=mean, std=std, interpolation=data_cfg["interpolation"], in_chans=in_chans)
    except ValueError as err:  # e.g. backbone.preprocessing.mean with the wrong number of values
        raise FinetuneError(f"backbone.preprocessing / dataset.image_size: {err}") from None


def write_run_record(cfg: DictConfig, run_dir: Path, weights: dict, data: dict) -> None:
    """The run directory's ``config.yaml`` (resolved), ``weights.json`` and ``data.json``; a file that
    already holds the same record (a resumed run) is left untouched."""
    run_dir.mkdir(parents=True, exist_ok=True)
    records = {
        "config.yaml": OmegaConf.to_yaml(cfg, resolve=True),
        "weights.json": json_text(weights),
        "data.json": json_text(data),
    }
    for name, text in records.items():
        path = run_dir / name
        if not (path.is_file() and path.read_text() == text):
            write_text(path, text)


def write_results(
    run_dir: Path,
    results: dict[str, torch.Tensor],
    class_names: list[str],
    phases: list[Phase],
    seconds: float,
    ddp: dict,
    checkpoint: Best,
    tested: str,
    test_decisions: Callable[[Mapping], dict],
    record: dict | None = None,
) -> dict:
    """metrics.json (test scalars, per-class values, phases, wall time, the validation score that
    picked the best epoch, what was tested: ``best.ckpt``, ``last.ckpt`` or ``IN_MEMORY``), confusion
    CSV/plot, curves of the monitored metric.

    Each phase records its planned ``epochs``, the ``epochs_run`` its logs show (every attempt of a
    resumed phase) and ``stopped_epoch``: the last epoch (1-based) of a phase that early stopping
    ended before its planned epochs, else None. ``test_decisions``: the task's ``Task.test_decisions`` (a re-test
    keeps the robustness record while they hold); ``record``: the task's own entries (``Task.test_record``)."""
    scalars = {k: _json_number(v) for k, v in results.items() if v.ndim == 0}
    per_class = {k: dict(zip(class_names, (_json_number(x) for x in v))) for k, v in results.items() if v.ndim == 1}
    plots = run_dir / "plots"
    if "confusion" in results and results["confusion"].ndim == 2:
        matrix = results["confusion"].numpy().astype(np.int64)
        _write_confusion_csv(run_dir / "confusion_matrix.csv", matrix, class_names)
        plot_confusion(matrix, class_names, plots / "confusion_matrix.png", tested_split(record or {}))
    logs = [log_attempts(run_dir / "logs" / p.name) for p in phases]  # every attempt of a resumed phase
    plot_curves(
        epoch_history([attempts for attempts in logs if attempts]),
        plots / "curves.png",
        checkpoint.monitor.removeprefix("val/"),
    )
    best = None if checkpoint.best_model_score is None else _json_number(checkpoint.best_model_score)
    metrics = {
        "test": scalars,
        "test_per_class": per_class,
        "wall_time_s": round(seconds, 1),
        "checkpoint": {"monitor": checkpoint.monitor, "best": best, "tested": tested},
        "phases": [_phase_record(p, attempts) for p, attempts in zip(phases, logs)],
        **(record or {}),
        "finetune_version": __version__,
        **({"ddp": ddp} if ddp["param_checksums_per_rank"] else {}),
    }
    metrics.update(_kept_robustness(run_dir / "metrics.json", metrics, test_decisions))
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def _kept_robustness(metrics_file: Path, metrics: dict, test_decisions: Callable[[Mapping], dict]) -> dict:
    """A re-test's (``resume_finished``) copy of what ``finetune evaluate`` wrote into ``metrics_file``, kept
    while the re-test decides as the test it was measured after did (the tested checkpoint and the task's
    ``test_decisions``: threshold, temperature, TTA); one that changes them (``threshold=0.5``,
    ``calibration=none``, ``tta=true``) drops it, with a warning naming the command that measures it again."""
    previous = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    if "robustness" not in previous:
        return {}
    before, now = _decided_with(previous, test_decisions), _decided_with(metrics, test_decisions)
    if all(_same(before[key], now[key]) for key in before):
        return {"robustness": previous["robustness"]}
    changed = ", ".join(f"{key} {before[key]} -> {now[key]}" for key in before if not _same(before[key], now[key]))
    log.warning(
        "metrics.json: the robustness record (%s) was measured with the decisions of the previous test; this "
        "re-test changed them (%s), so it is dropped: run %s again",
        ", ".join(previous["robustness"]),
        changed,
        "; ".join(f"finetune evaluate run={metrics_file.parent} corruptions={s}" for s in previous["robustness"]),
    )
    return {}


def _decided_with(metrics: Mapping, test_decisions: Callable[[Mapping], dict]) -> dict:
    """What a test decided with, from its metrics.json: the tested checkpoint and the task's decisions."""
    return {"checkpoint": metrics.get("checkpoint", {}).get("tested"), **test_decisions(metrics)}


def _same(a: object, b: object) -> bool:
    """Equal, floats to 1e-4 relative (a temperature fitted again in another process differs in its last bits)."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-4 * max(abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _phase_record(phase: Phase, attempts: list[Path]) -> dict:
    """A phase's entry in metrics.json: its plan and the epochs its CSV logs show it ran."""
    run = epochs_logged(attempts)
    return {
        "name": phase.name,
        "epochs": phase.epochs,
        "freeze": phase.freeze,
        "epochs_run": run,
        "stopped_epoch": run if 0 < run < phase.epochs else None,
    }


def epochs_logged(attempts: list[Path]) -> int:
    """Epochs of one phase its ``metrics.csv`` files (every attempt) logged: the highest epoch + 1."""
    last = -1
    for path in attempts:
        with open(path, newline="") as f:
            last = max([last, *(int(float(row["epoch"])) for row in csv.DictReader(f) if row.get("epoch"))])
    return last + 1


def _json_number(value: torch.Tensor) -> float | None:
    """A metric rounded for metrics.json; None where it is undefined (NaN, e.g. an absent class)."""
    number = float(value)
    return None if number != number else round(number, 6)


def _write_confusion_csv(path: Path, matrix: np.ndarray, class_names: list[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, matrix):
            writer.writerow([name, *row.tolist()])
