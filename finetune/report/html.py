"""One self-contained HTML page per run: ``<run dir>/report.html``.

The page is the same for every task: configuration, the model's stages with their
frozen/trainable status per phase, test metrics, training curves and the confusion matrix. The
run's task adds its own sections (``Task.report_sections``, in ``finetune/tasks/<task>/report.py``):
classes and training samples after the configuration, and what its predictions look like (the most
confidently wrong test images; the test masks with the lowest IoU) after the results. Images are
embedded as base64 ``data:`` URIs; no external CSS or JavaScript, so the file can be mailed or
archived alone. ``finetune report run=<run dir>`` rebuilds it from a finished run directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from html import escape
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from finetune.data.transforms import Preprocessing
from finetune.models.freezing import FineTuneModel, frozen_stages, stage_status
from finetune.models.saved_runs import load_run
from finetune.models.summary import count_layers, roll_up
from finetune.report.page import (
    MAX_TABLE_CLASSES,
    ReportOptions,
    RunRecord,
    TaskSections,
    confusion_table,
    file_img,
    key_values,
    read_confusion,
    table,
    tested_split,
    tested_split_short,
)
from finetune.report.robustness import robustness_section
from finetune.run.artifacts import write_text
from finetune.run.schedule import phases_from
from finetune.run.task import Task
from finetune.version import __version__

CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;color:#1f2328;
 max-width:1080px;margin:24px auto;padding:0 20px;line-height:1.45;font-size:14px}
h1{font-size:24px;margin-bottom:2px}h2{font-size:18px;border-bottom:1px solid #d0d7de;padding-bottom:4px;
 margin-top:32px}h3{font-size:15px;margin:18px 0 6px}.sub{color:#59636e;margin-top:0}
table{border-collapse:collapse;margin:6px 0 12px}th,td{border:1px solid #d0d7de;padding:3px 9px;
 text-align:left;vertical-align:top}th{background:#f6f8fa}tr:nth-child(even) td{background:#fbfcfd}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}td.k{color:#59636e;white-space:nowrap}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;word-break:break-all}
.frozen{color:#8c959f}.trainable{color:#1a7f37}.mixed{color:#9a6700}
.cols{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}
img.plot{max-width:100%;border:1px solid #d0d7de}img.cm{max-width:560px;width:100%}
img.thumb{width:56px;height:56px;object-fit:contain;background:#f6f8fa;border:1px solid #d0d7de;
 margin:0 4px 4px 0}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.card{width:120px;font-size:12px;text-align:center}
.card img{width:112px;height:112px;object-fit:contain;background:#f6f8fa;border:1px solid #d0d7de}
.card.wide{width:auto;max-width:100%}.card.wide img{width:auto;height:auto;max-width:100%}
img.pair{height:112px;background:#f6f8fa;border:1px solid #d0d7de;margin:0 12px 8px 0}
.swatch{display:inline-block;width:12px;height:12px;border:1px solid #8c959f;vertical-align:middle}
.bad{color:#cf222e}.note{color:#59636e;font-size:13px}
table.cm td{min-width:44px}table.cm td.hi{color:#fff}
"""


def datamodule_for(cfg: DictConfig, task: Task, preprocessing: Preprocessing):
    """The run's data module (``task``'s) rebuilt from its config, ready to serve its splits."""
    data = task.data_module(cfg)
    data.set_preprocessing(preprocessing)
    return data


# --- sections every task shares -----------------------------------------------------------------


def _config_section(run: RunRecord) -> str:
    cfg, w = run.cfg, run.weights
    head_options = ", ".join(f"{k}={v}" for k, v in cfg.head.items() if k != "kind" and v is not None) or "-"
    augment = OmegaConf.to_container(cfg.augment, resolve=True)
    active = (
        ", ".join(
            f"{k}={v}" for k, v in augment.items() if v and k not in ("dropout_holes", "dropout_size", "clahe_clip")
        )
        or "none (resize + normalize only)"
    )
    dataset = cfg.dataset
    source = dataset.get("csv") or dataset.get("root") or "built in"
    pre = run.data.get("preprocessing", {})
    general = [
        ("dataset", f"{dataset.kind} ({source})"),
        ("image size", "x".join(map(str, pre.get("size", []))) or dataset.get("image_size")),
        ("grayscale", run.data.get("grayscale", "-")),
        (
            "backbone",
            f"{cfg.backbone.name} (freeze={cfg.backbone.freeze}, BatchNorm in frozen stages: "
            f"{cfg.backbone.bn}, drop_path_rate={cfg.backbone.drop_path_rate})",
        ),
        ("weights", f"{w.get('source')}: {w.get('model')}{'.' + w['tag'] if w.get('tag') else ''}"),
        ("weights sha256", w.get("sha256") or "- (random init)"),
        (
            "preprocessing",
            f"mean {pre.get('mean')}, std {pre.get('std')}, {pre.get('interpolation')}, "
            f"{pre.get('in_chans')} input channel(s)",
        ),
        ("head", f"{cfg.head.kind} ({head_options})"),
        ("augment", active),
        ("trainer", f"{cfg.trainer.accelerator}, {cfg.trainer.devices} device(s), precision {cfg.trainer.precision}"),
        ("seed", cfg.seed),
    ]
    phases = [
        (
            p.name,
            p.epochs,
            p.freeze,
            p.optim.optimizer,
            f"{p.optim.lr:g}",
            f"{p.optim.backbone_lr_mult:g}",
            "-" if p.optim.layer_decay is None else f"{p.optim.layer_decay:g}",
            f"{p.optim.weight_decay:g}",
            p.optim.scheduler,
        )
        for p in phases_from(cfg)
    ]
    return (
        "<h2>Configuration</h2>"
        + key_values(general)
        + f"<h3>Schedule: {len(phases)} phase(s), batch size {cfg.schedule.batch_size}</h3>"
        + table(
            [
                "phase",
                "epochs",
                "freeze",
                "optimizer",
                "head lr",
                "backbone lr ×",
                "layer decay",
                "weight decay",
                "scheduler",
            ],
            phases,
            numeric=(1, 4, 5, 6, 7),
        )
    )


def _stage_section(run: RunRecord, model: FineTuneModel) -> str:
    pre = run.data["preprocessing"]
    shape = (pre["in_chans"], *pre["size"])
    counted = {s.name: s for s in roll_up(count_layers(model, tuple(shape)), model.stage_of)}
    phases = phases_from(run.cfg)
    frozen = [set(frozen_stages(model.stage_map, p.freeze, run.cfg.backbone.name)) for p in phases]
    rows, css, statuses = [], [], stage_status(model)
    for status in statuses:
        c = counted.get(status.stage)
        flags = ["frozen" if status.stage in f else "trainable" for f in frozen]
        trained = [
            f
            if f == "frozen" or status.stage == "head" or not model.adapter
            else model.adapter.kind
            if status.adapter
            else "frozen"  # only the adapter trains
            for f in flags
        ]
        rows.append(
            [
                status.stage,
                f"{status.params:,}",
                f"{c.units:,}" if c else "-",
                f"{c.connections_with_bias:,}" if c else "-",
                status.norm_layers,
                *trained,
            ]
        )
        css.append(flags[-1])
    header = ["stage", "params", "units", "connections", "norm layers", *(f"phase {p.name}" for p in phases)]
    total = sum(s.params for s in statuses)
    return (
        f"<h2>Model</h2><p>{escape(run.cfg.backbone.name)} + {escape(run.cfg.head.kind)} head: "
        f"{total:,} parameters"
        + (f" ({model.adapter.kind} adapter: {model.adapter.parameters:,} of them tunable)" if model.adapter else "")
        + "; units and connections (multiply-adds) for one "
        f"{'x'.join(map(str, shape))} input. Colours follow the last phase.</p>"
        + table(header, rows, numeric=(1, 2, 3, 4), row_class=css)
    )


def _results_section(run: RunRecord) -> str:
    m = run.metrics
    if not m:
        return '<h2>Results</h2><p class="note">metrics.json is missing: the run did not finish.</p>'
    scalars = [(k, "-" if v is None else f"{v:.4f}") for k, v in m.get("test", {}).items()]
    wall = m.get("wall_time_s")
    info = f"wall time {wall:.0f} s" if isinstance(wall, (int, float)) else ""
    chosen = m.get("checkpoint") or {}
    if chosen.get("tested") == "last.ckpt":  # checkpoints.keep=last
        info += "; the tested checkpoint holds the final weights (checkpoints.keep=last)"
    elif chosen.get("best") is not None:
        info += f"; the tested checkpoint had the best {chosen['monitor']}: {chosen['best']:.4f}"
    plots, split = run.run_dir / "plots", tested_split(m)
    return (
        f"<h2>Results</h2><p>Tested on: {escape(split)}; {escape(info)}.</p>"
        + f'<div class="cols"><div><h3>Metrics ({escape(tested_split_short(m))})</h3>'
        + table(["metric", "value"], scalars, numeric=(1,))
        + "</div>"
        + f'<div style="flex:1"><h3>Training curves</h3>{file_img(plots / "curves.png", "training curves")}'
        + f"</div></div><h3>Confusion matrix ({escape(split)})</h3>"
        + _confusion(run.run_dir)
    )


def _confusion(run_dir: Path) -> str:
    """The test's confusion matrix: its plot (shares of each true class), and up to
    ``MAX_TABLE_CLASSES`` classes the same as a table with the counts on hover."""
    plot = file_img(run_dir / "plots" / "confusion_matrix.png", "confusion matrix", "plot cm")
    matrix, names = read_confusion(run_dir / "confusion_matrix.csv")
    if matrix is None or len(names) > MAX_TABLE_CLASSES:
        return plot
    return plot + f"<details><summary>as a table (counts on hover)</summary>{confusion_table(matrix, names)}</details>"


# --- the page -----------------------------------------------------------------------------------


def _debug_note(metrics: Mapping) -> str:
    """The warning atop the page of a ``trainer=debug`` run (metrics.json's ``debug`` entry); "" for any other."""
    debug = metrics.get("debug")
    if not debug:
        return ""
    batches = debug.get("batches", {})
    text = (
        f"debug run (trainer=debug): {debug.get('epochs_per_phase')} epoch of {batches.get('train')} training batches "
        f"per phase, {batches.get('val')} val and {batches.get('test')} test batches; {debug.get('note')}"
    )
    return f'<p class="bad"><strong>{escape(text)}</strong>: train without trainer=debug for results to read.</p>'


def render_report(run: RunRecord, model: FineTuneModel, sections: TaskSections) -> str:
    """The whole HTML page: the shared sections with the task's ``sections`` in their places."""
    title = f"finetune report: {run.run_dir.name}"
    version = run.metrics.get("finetune_version", __version__)
    subtitle = f"{run.run_dir.resolve()} · report written {datetime.now():%Y-%m-%d %H:%M} · finetune {version}"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{escape(title)}</h1><p class="sub">{escape(subtitle)}</p>'
        + _debug_note(run.metrics)
        + _config_section(run)
        + "".join(sections.data)
        + _stage_section(run, model)
        + _results_section(run)
        + "".join(sections.results)
        + robustness_section(run.metrics)
        + "</body></html>\n"
    )


def write_report(
    run_dir: str | Path,
    task: Task,
    data=None,
    model: FineTuneModel | None = None,
    worst: int = 12,
    samples_per_class: int = 4,
) -> Path:
    """Write ``<run_dir>/report.html`` for a run of ``task``. Pass the in-memory ``data`` (its
    preprocessing set) and ``model`` (best weights) when you have them; what is missing is rebuilt
    from the run directory. ``worst``: test images shown as the task's worst predictions;
    ``samples_per_class``: training samples shown (per class where the task has them)."""
    run_dir = Path(run_dir)
    run = RunRecord.read(run_dir)
    if model is None or data is None:
        loaded = load_run(run_dir, task)
        model = model or loaded.model
        data = data or datamodule_for(loaded.cfg, task, loaded.preprocessing)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            sections = task.report_sections(run, data, model, ReportOptions(worst, samples_per_class))
            page = render_report(run, model, sections)
    finally:
        model.train(was_training)
    return write_text(run_dir / "report.html", page)
