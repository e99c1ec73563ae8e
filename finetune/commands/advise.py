"""``finetune advise <training overrides>``: the lecture's transfer-learning rules measured on your data.
Linear probes after every stage of the frozen pretrained backbone (``finetune.training.probing``) are
read into a freeze depth, schedule and learning rates (``finetune.training.recommend``), printed with a
ready training command and written to a run directory of its own."""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from finetune.commands.args import compose_config, print_error, tool_run_dir
from finetune.commands.tool import tool_main
from finetune.run.errors import FinetuneError
from finetune.run.schema import PhaseSchema

if TYPE_CHECKING:
    from finetune.training.probing import Probing
    from finetune.training.recommend import Recommendation

JSON_NAME, PLOT_NAME = "advice.json", "advice.png"
# A phase key left out reads the schedule's: the schema's ${schedule.<key>} (and backbone.freeze)
READ_FROM_SCHEDULE = {f.name: f.default for f in dataclasses.fields(PhaseSchema)}
_ABSENT = object()

# advise's own key=value options (every other argument is a training override); out: the run directory to write
OPTIONS: dict[str, str | None] = {"out": None}


def main(argv: Sequence[str] | None = None) -> int:
    """finetune advise: which stages to freeze and how to train, measured on your data.

    finetune advise <training overrides> [out=DIR]

    Builds the run exactly as `finetune <training overrides>` would (same data, weights, preprocessing),
    sends the train and val splits once through the frozen pretrained backbone (evaluation transform, no
    training) and fits a linear probe (logistic regression) on the pooled features after every stage.
    How the val score grows from stage to stage reads as a distance from ImageNet (close: it peaks at
    the last stage; far: it flattens or peaks early); with the images per class and the class balance it
    gives backbone.freeze, the schedule and its learning rates (rules: finetune/training/recommend.py).

    out=   the run directory to write (must be new or empty); default runs/<time>_advise_<dataset>_<backbone>

    Prints the table (stage, feature dim, val accuracy, val AUC), the recommendation with its reasons
    and, last, the training command with the recommended settings. Writes advice.json (scores, data,
    recommendation, command, timings) and advice.png (val accuracy and AUC by stage).
    Classification only.
    """
    return tool_main(
        argv,
        main.__doc__,
        OPTIONS,
        "+classification=hymenoptera dataset.root=DIR",
        "advise writes its own run directory; choose it with out=DIR",
        lambda own: own["out"],
        lambda out, overrides: run(overrides, out),
    )


def run(overrides: list[str], out: str | None) -> int:
    """Check the config, claim the run directory, probe, recommend, write, print; an exit code."""
    try:
        advice = advise(overrides, out)
    except (FinetuneError, OSError) as err:
        return print_error(err)
    print(advice.text())
    return 0


@dataclasses.dataclass(frozen=True)
class Advice:
    """What ``finetune advise`` measured and recommends: the probes, the recommendation, the training overrides
    with its settings (``command``: the command line), and the files written."""

    probing: Probing
    recommendation: Recommendation
    overrides: list[str]
    command: str
    json: Path
    plot: Path

    def text(self) -> str:
        """What ``finetune advise`` prints: the table, the recommendation, the timings and the command."""
        seconds = self.probing.seconds
        return "\n".join(
            [
                report(self.probing, self.recommendation),
                f"measured in {seconds['total']:.1f} s (build {seconds['build']:.1f}, features "
                f"{seconds['features']:.1f}, probes {seconds['probes']:.1f}); wrote {self.json} and {self.plot}",
                "train with:",
                self.command,
            ]
        )


def advise(overrides: list[str], out: str | None) -> Advice:
    """Check the config, claim the run directory (``out``, or a new one), probe, recommend and write
    (``finetune advise`` and ``finetune.advise``)."""
    from finetune.commands.precheck import check_config
    from finetune.run.rundir import claim_run_dir, forget_claims, release_if_unused
    from finetune.tasks.registry import get_task

    cfg = compose_config(overrides)
    forget_claims()
    run_dir = None
    try:
        if cfg.resume or cfg.plan:
            raise FinetuneError("advise measures the pretrained backbone on fresh data: drop resume= and plan=")
        task = get_task(cfg.task)
        task.check_probing(cfg)  # e.g. segmentation: no per-image class to probe
        check_config(cfg)
        if out:
            claim_run_dir(out)
            run_dir = Path(out)
        else:
            run_dir = Path(tool_run_dir("advise", cfg))
        from finetune.training.probing import measure
        from finetune.training.recommend import recommend

        probing = measure(task, cfg)
        data = probing.data
        advice = recommend(probing.curve(), data.val, data.per_class, data.imbalance, probing.transformer)
        ready = ready_overrides(overrides, advice.settings)
        command = shlex.join(["finetune", *ready])
        json_path, plot_path = write_advice(run_dir, probing, advice, command, overrides)
    finally:
        if run_dir is not None:
            release_if_unused(run_dir)  # refused before anything was written: no clutter
    return Advice(probing, advice, ready, command, json_path, plot_path)


def override_value(value: object) -> str:
    """``value`` in Hydra's override grammar (null, true, 0.005, [..], {k:v})."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def ready_overrides(overrides: list[str], settings: Mapping[str, object]) -> list[str]:
    """The user's overrides, with ``settings`` in place of any earlier value of their keys (and of
    ``schedule.phases``). A recipe that pins its own ``schedule.phases`` would outlive the chosen
    schedule group: then the group's phases are set explicitly."""

    def key(override: str) -> str:
        return override.split("=", 1)[0].lstrip("+~")

    kept = [o for o in overrides if key(o) not in settings and not key(o).startswith("schedule.phases")]
    ready = [*kept, *(f"{k}={override_value(v)}" for k, v in settings.items())]
    wanted = _phases([f"schedule={settings['schedule']}"])
    if _phases(ready) != wanted:
        ready.append(f"schedule.phases={override_value(wanted)}")
    return ready


def _phases(overrides: list[str]) -> list:
    """The schedule's phases as written: a key a phase reads from the schedule (the schema's
    ``${schedule.…}``) is left out."""
    phases = OmegaConf.to_container(compose_config(overrides).schedule.phases, resolve=False)
    return [{k: v for k, v in phase.items() if v != READ_FROM_SCHEDULE.get(k, _ABSENT)} for phase in phases]


def report(probing: Probing, advice: Recommendation) -> str:
    """The printed table (stage, dim, val acc, val AUC; the peak marked) and the recommendation."""
    data = probing.data
    ratio = "inf" if data.imbalance == float("inf") else f"{data.imbalance:.1f}"
    lines = [
        f"advise: {probing.backbone} ({probing.weights_source} weights): {len(data.class_counts)} classes, "
        f"{data.train} train / {data.val} val images, {data.per_class:.0f} per class (largest/smallest {ratio})"
    ]
    if probing.weights_source == "random":
        lines.append("note: backbone.pretrained=false: random features, the curve says nothing about transfer")
    width = max(len(s.stage) for s in probing.scores)
    lines.append(f"{'stage':<{width}}  {'dim':>5}  {'val acc':>7}  {'val AUC':>7}")
    for i, s in enumerate(probing.scores, 1):
        auc = "-" if s.auc is None else f"{s.auc:.3f}"
        mark = "  <- peak" if i == advice.peak else ""
        lines.append(f"{s.stage:<{width}}  {s.dim:>5}  {s.acc:>7.3f}  {auc:>7}{mark}")
    settings = " ".join(f"{k}={override_value(v)}" for k, v in advice.settings.items())
    lines += [
        f"recommendation (rule {advice.rule}, domain {advice.domain}, {advice.size} images): {settings}",
        *(f"  - {reason}" for reason in advice.reasons),
    ]
    if advice.alternative:
        lines.append(f"  alternative: {advice.alternative}")
    return "\n".join(lines)


def write_advice(
    run_dir: Path, probing: Probing, advice: Recommendation, command: str, overrides: list[str]
) -> tuple[Path, Path]:
    """``advice.json`` (scores by stage, data, recommendation, command, timings) and ``advice.png``."""
    from finetune.report.plots import plot_stage_scores
    from finetune.run.artifacts import write_json
    from finetune.version import __version__

    record = {
        "stages": [dataclasses.asdict(s) for s in probing.scores],
        "metric": probing.metric,
        "data": probing.data.to_dict(),
        "recommendation": advice.to_dict(),
        "command": command,
        "overrides": overrides,
        "seconds": probing.seconds,
        "finetune_version": __version__,
        "backbone": {
            "name": probing.backbone,
            "weights_source": probing.weights_source,
            "transformer": probing.transformer,
        },
    }
    json_path = write_json(run_dir / JSON_NAME, record)
    scores = probing.scores
    title = f"{probing.backbone}: linear probes by stage ({probing.data.train} train / {probing.data.val} val)"
    plot_path = plot_stage_scores(
        [s.stage for s in scores],
        [s.acc for s in scores],
        [s.auc for s in scores],
        advice.peak - 1,
        run_dir / PLOT_NAME,
        title,
    )
    return json_path, plot_path
