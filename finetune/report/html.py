"""One self-contained HTML page per run: ``<run dir>/report.html``.

Configuration, data (class counts, sample images), the model's stages with their frozen/trainable
status per phase, training curves, test metrics, the confusion matrix and the most confidently
wrong test images. Images are embedded as base64 ``data:`` URIs; no external CSS or JavaScript,
so the file can be mailed or archived alone. ``python -m finetune.report.html run=<run dir>`` rebuilds
it from a finished run directory.
"""
from __future__ import annotations

import base64
import io
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from finetune import __version__
from finetune.artifacts import write_text
from finetune.cli import parse_args, run_command
from finetune.engine.schedule import phases_from
from finetune.data.datamodule import ClassificationDataModule
from finetune.data.transforms import Preprocessing
from finetune.errors import FinetuneError
from finetune.models.freezing import FineTuneModel, frozen_stages, stage_status
from finetune.engine.runs import load_run
from finetune.models.summary import count_layers, roll_up
from finetune.tasks.classification.module import decide, probabilities

THUMB = 64  # thumbnail side in pixels
MAX_SAMPLE_CLASSES = 20

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
.bad{color:#cf222e}.note{color:#59636e;font-size:13px}
"""


# --- embedding ----------------------------------------------------------------------------------


def png_data_uri(png: bytes) -> str:
    """A PNG file's bytes as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail_png(image: np.ndarray, side: int = THUMB) -> bytes:
    """HWC uint8 image as a PNG whose longer side is ``side`` (small images enlarged without blur)."""
    picture = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image[..., :3])
    scale = side / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    picture = picture.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _img(uri: str, alt: str, css: str) -> str:
    return f'<img class="{css}" src="{uri}" alt="{escape(alt)}">'


def _file_img(path: Path, alt: str, css: str = "plot") -> str:
    if not path.is_file():
        return f'<p class="note">{escape(path.name)} was not written for this run.</p>'
    return _img(png_data_uri(path.read_bytes()), alt, css)


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = (),
           row_class: Sequence[str] | None = None) -> str:
    """An HTML table; every cell escaped, columns in ``numeric`` right-aligned."""
    head = "".join(f'<th class="n">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = "".join(f'<td class="n">{escape(str(c))}</td>' if i in numeric else f"<td>{escape(str(c))}</td>"
                        for i, c in enumerate(row))
        css = f' class="{row_class[r]}"' if row_class else ""
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _key_values(pairs: Iterable[tuple[str, object]]) -> str:
    rows = "".join(f'<tr><td class="k">{escape(k)}</td><td>{escape(str(v))}</td></tr>' for k, v in pairs)
    return f"<table><tbody>{rows}</tbody></table>"


# --- what the report needs from the run ---------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """The files of a run directory the report reads (metrics may be absent for an unfinished run)."""

    run_dir: Path
    cfg: DictConfig
    data: dict
    weights: dict
    metrics: dict

    @classmethod
    def read(cls, run_dir: Path) -> RunRecord:
        for name in ("config.yaml", "data.json", "weights.json"):
            if not (run_dir / name).is_file():
                raise FinetuneError(f"{run_dir / name} is missing: {run_dir} is not a finetune run directory")
        metrics = run_dir / "metrics.json"
        return cls(run_dir, OmegaConf.load(run_dir / "config.yaml"),
                   json.loads((run_dir / "data.json").read_text()),
                   json.loads((run_dir / "weights.json").read_text()),
                   json.loads(metrics.read_text()) if metrics.is_file() else {})


def datamodule_for(cfg: DictConfig, preprocessing: Preprocessing) -> ClassificationDataModule:
    """The run's data module rebuilt from its config, ready to serve the test split."""
    data = ClassificationDataModule(cfg.dataset, cfg.augment, cfg.schedule.batch_size,
                                    cfg.dataset.num_workers, cfg.seed)
    data.set_preprocessing(preprocessing)
    return data


@dataclass(frozen=True)
class Mistake:
    """One wrong test prediction: split index, true and predicted labels, confidence in the prediction."""

    index: int
    true: str
    predicted: str
    confidence: float


def _test_batches(cfg: DictConfig, total: int) -> int:
    """How many test batches the run evaluated (``trainer.limit_test_batches``: int, fraction or null)."""
    limit = cfg.trainer.get("limit_test_batches")
    if limit is None:
        return total
    return min(total, int(limit)) if isinstance(limit, int) else min(total, math.ceil(float(limit) * total))


def worst_mistakes(model: FineTuneModel, data: ClassificationDataModule, cfg: DictConfig, n: int,
                   threshold: float | list[float] | None = None) -> list[Mistake]:
    """The ``n`` most confident wrong predictions on the test split (the batches the run tested),
    decided as the test metrics were (argmax, or ``threshold`` for binary / multi-label tasks)."""
    if n <= 0 or not len(data.splits.get("test", ())):
        return []
    loader = data.test_dataloader()
    batches = _test_batches(cfg, len(loader))
    ref = next(model.parameters())
    multilabel, names = data.info.multilabel, data.info.class_names
    was_training = model.training
    model.eval()
    probs, targets = [], []
    try:
        with torch.no_grad():
            for i, (x, y) in enumerate(loader):
                if i >= batches:
                    break
                probs.append(probabilities(model(x.to(ref.device, ref.dtype)).cpu(), data.info.task))
                targets.append(y)
    finally:
        model.train(was_training)
    p, y = torch.cat(probs), torch.cat(targets)
    decision = decide(p, data.info.task, threshold)
    if multilabel:
        wrong = (decision != y.int()).any(dim=1)
        confidence = (p - y).abs().amax(dim=1)
        label = lambda row: ", ".join(names[j] for j in torch.flatnonzero(row).tolist()) or "(none)"  # noqa: E731
        true = [label(row) for row in y]
        predicted = [label(row) for row in decision]
    else:
        top = decision
        confidence = p.gather(1, top[:, None]).squeeze(1)
        wrong = top != y
        true, predicted = [names[i] for i in y.tolist()], [names[i] for i in top.tolist()]
    order = [i for i in confidence.argsort(descending=True).tolist() if wrong[i]][:n]
    return [Mistake(i, true[i], predicted[i], float(confidence[i])) for i in order]


# --- sections -----------------------------------------------------------------------------------


def _config_section(run: RunRecord) -> str:
    cfg, w = run.cfg, run.weights
    head_options = ", ".join(f"{k}={v}" for k, v in cfg.head.items() if k != "kind") or "-"
    augment = OmegaConf.to_container(cfg.augment, resolve=True)
    active = ", ".join(f"{k}={v}" for k, v in augment.items()
                       if v and k not in ("dropout_holes", "dropout_size")) or "none (resize + normalize only)"
    dataset = cfg.dataset
    source = dataset.get("csv") or dataset.get("root") or "built in"
    pre = run.data.get("preprocessing", {})
    general = [
        ("dataset", f"{dataset.kind} ({source})"),
        ("image size", "x".join(map(str, pre.get("size", []))) or dataset.image_size),
        ("grayscale", run.data.get("grayscale", "-")),
        ("backbone", f"{cfg.backbone.name} (freeze={cfg.backbone.freeze}, BatchNorm in frozen stages: "
                     f"{cfg.backbone.bn}, drop_path_rate={cfg.backbone.drop_path_rate})"),
        ("weights", f"{w.get('source')}: {w.get('model')}{'.' + w['tag'] if w.get('tag') else ''}"),
        ("weights sha256", w.get("sha256") or "- (random init)"),
        ("preprocessing", f"mean {pre.get('mean')}, std {pre.get('std')}, {pre.get('interpolation')}, "
                          f"{pre.get('in_chans')} input channel(s)"),
        ("head", f"{cfg.head.kind} ({head_options})"),
        ("augment", active),
        ("trainer", f"{cfg.trainer.accelerator}, {cfg.trainer.devices} device(s), precision {cfg.trainer.precision}"),
        ("seed", cfg.seed),
    ]
    phases = [(p.name, p.epochs, p.freeze, p.optim.optimizer, f"{p.optim.lr:g}", f"{p.optim.backbone_lr_mult:g}",
               "-" if p.optim.layer_decay is None else f"{p.optim.layer_decay:g}", f"{p.optim.weight_decay:g}",
               p.optim.scheduler) for p in phases_from(cfg)]
    return ("<h2>Configuration</h2>" + _key_values(general)
            + f"<h3>Schedule: {len(phases)} phase(s), batch size {cfg.schedule.batch_size}</h3>"
            + _table(["phase", "epochs", "freeze", "optimizer", "head lr", "backbone lr ×", "layer decay",
                      "weight decay", "scheduler"], phases, numeric=(1, 4, 5, 6, 7)))


def _samples_by_class(data: ClassificationDataModule, per_class: int) -> list[tuple[str, list[np.ndarray]]]:
    """Up to ``per_class`` seeded training images of each of the first classes."""
    samples = data.splits["train"]
    targets = samples.targets
    rng = np.random.default_rng(data.seed)
    rows = []
    for c, name in enumerate(data.info.class_names[:MAX_SAMPLE_CLASSES]):
        members = np.flatnonzero(targets[:, c] > 0 if targets.ndim == 2 else targets == c)
        chosen = np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False))
        rows.append((name, [samples.image(int(i), data.info.image_channels) for i in chosen]))
    return rows


def _data_section(run: RunRecord, data: ClassificationDataModule, per_class: int) -> str:
    names = run.data["class_names"]
    counts = run.data.get("class_counts_train", [])
    per_class_metrics = run.metrics.get("test_per_class", {})
    header = ["class", "train images", *per_class_metrics]
    rows = [[name, counts[i] if i < len(counts) else "-",
             *(f"{per_class_metrics[m].get(name, float('nan')):.3f}" for m in per_class_metrics)]
            for i, name in enumerate(names)]
    sizes = ", ".join(f"{k} {v:,}" for k, v in data.split_sizes.items())
    table = _table(header, rows, numeric=tuple(range(1, len(header))))
    classes = (table if len(names) <= MAX_SAMPLE_CLASSES else
               f"<details><summary>{len(names)} classes (click to show)</summary>{table}</details>")
    gallery = "".join(
        f'<tr><td>{escape(name)}</td><td>'
        + "".join(_img(png_data_uri(thumbnail_png(im)), f"training image of {name}", "thumb") for im in images)
        + "</td></tr>" for name, images in _samples_by_class(data, per_class))
    more = (f'<p class="note">Samples of the first {MAX_SAMPLE_CLASSES} of {len(names)} classes.</p>'
            if len(names) > MAX_SAMPLE_CLASSES else "")
    return (f"<h2>Data</h2><p>{len(names)} classes{' (multi-label)' if run.data.get('multilabel') else ''}; "
            f"images per split: {escape(sizes)}; source images have {run.data.get('image_channels')} channel(s).</p>"
            + f'<div class="cols"><div><h3>Classes</h3>{classes}</div><div><h3>Training samples</h3>'
            + f"<table><tbody>{gallery}</tbody></table>{more}</div></div>")


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
        rows.append([status.stage, f"{status.params:,}", f"{c.units:,}" if c else "-",
                     f"{c.connections_with_bias:,}" if c else "-", status.norm_layers, *flags])
        css.append(flags[-1])
    header = ["stage", "params", "units", "connections", "norm layers", *(f"phase {p.name}" for p in phases)]
    total = sum(s.params for s in statuses)
    return (f"<h2>Model</h2><p>{escape(run.cfg.backbone.name)} + {escape(run.cfg.head.kind)} head: "
            f"{total:,} parameters; units and connections (multiply-adds) for one "
            f"{'x'.join(map(str, shape))} input. Colours follow the last phase.</p>"
            + _table(header, rows, numeric=(1, 2, 3, 4), row_class=css))


def _results_section(run: RunRecord) -> str:
    m = run.metrics
    if not m:
        return '<h2>Results</h2><p class="note">metrics.json is missing: the run did not finish.</p>'
    scalars = [(k, "-" if v is None else f"{v:.4f}") for k, v in m.get("test", {}).items()]
    wall = m.get("wall_time_s")
    info = f"wall time {wall:.0f} s" if isinstance(wall, (int, float)) else ""
    chosen = m.get("checkpoint") or {}
    if chosen.get("best") is not None:
        info += f"; the tested checkpoint had the best {chosen['monitor']}: {chosen['best']:.4f}"
    plots = run.run_dir / "plots"
    return (f"<h2>Results</h2><p>Test split; {escape(info)}.</p>"
            + '<div class="cols"><div><h3>Test metrics</h3>'
            + _table(["metric", "value"], scalars, numeric=(1,)) + "</div>"
            + f'<div style="flex:1"><h3>Training curves</h3>{_file_img(plots / "curves.png", "training curves")}'
            + "</div></div><h3>Confusion matrix</h3>"
            + _file_img(plots / "confusion_matrix.png", "confusion matrix", "plot cm"))


def _mistakes_section(mistakes: list[Mistake], data: ClassificationDataModule) -> str:
    if not mistakes:
        return "<h2>Most confident mistakes</h2><p>No wrong predictions on the test images.</p>"
    samples, channels = data.splits["test"], data.info.image_channels
    cards = "".join(_mistake_card(m, samples.image(m.index, channels)) for m in mistakes)
    return ("<h2>Most confident mistakes</h2><p>Wrong test predictions, highest confidence first.</p>"
            + f'<div class="gallery">{cards}</div>')


def _mistake_card(mistake: Mistake, image: np.ndarray) -> str:
    picture = _img(png_data_uri(thumbnail_png(image, 112)), f"test image {mistake.index}", "")
    return (f'<div class="card">{picture}<div>true: <b>{escape(mistake.true)}</b></div>'
            f'<div class="bad">pred: <b>{escape(mistake.predicted)}</b> ({mistake.confidence:.0%})</div></div>')


def render_report(run: RunRecord, data: ClassificationDataModule, model: FineTuneModel,
                  mistakes: list[Mistake], samples_per_class: int = 4) -> str:
    """The whole HTML page."""
    title = f"finetune report: {run.run_dir.name}"
    version = run.metrics.get("finetune_version", __version__)
    subtitle = f"{run.run_dir.resolve()} · report written {datetime.now():%Y-%m-%d %H:%M} · finetune {version}"
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1><p class=\"sub\">{escape(subtitle)}</p>"
            + _config_section(run) + _data_section(run, data, samples_per_class) + _stage_section(run, model)
            + _results_section(run) + _mistakes_section(mistakes, data) + "</body></html>\n")


def write_report(run_dir: str | Path, data: ClassificationDataModule | None = None,
                 model: FineTuneModel | None = None, worst: int = 12, samples_per_class: int = 4) -> Path:
    """Write ``<run_dir>/report.html``. Pass the in-memory ``data`` (preprocessing set) and ``model``
    (best weights) when you have them; what is missing is rebuilt from the run directory."""
    run_dir = Path(run_dir)
    run = RunRecord.read(run_dir)
    if model is None or data is None:
        loaded = load_run(run_dir)
        model = model or loaded.model
        data = data or datamodule_for(loaded.cfg, loaded.preprocessing)
    mistakes = worst_mistakes(model, data, run.cfg, worst, run.metrics.get("test", {}).get("threshold"))
    return write_text(run_dir / "report.html", render_report(run, data, model, mistakes, samples_per_class))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m finetune.report.html run=<run dir>``: (re)write the run's report.html."""
    return run_command(_report_command, main.__doc__, argv)


def _report_command(argv: list[str]) -> None:
    args = parse_args(argv, {"run": None}, ["run"], "finetune.report.html")
    print(f"report written to {write_report(Path(args['run']).expanduser())}")


if __name__ == "__main__":
    sys.exit(main())
