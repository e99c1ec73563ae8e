"""``finetune explain run=<run dir> inputs=<image | folder | glob> [topk=5]
[stage=stage3] [channels=16] [filters=true] [out=<dir>]`` writes, per image,
``<out>/<image stem>/``: ``topk.json``, ``gradcam.png`` (image | Grad-CAM
overlay) and ``activations_<stage>.png`` (the ``channels`` strongest channels of
that stage's output), plus ``<out>/filters.png``: the backbone's first-layer
convolution filters before (the pretrained weights the run started from) and
after fine-tuning, side by side. ``out`` defaults to ``<run dir>/explain``. How:
``finetune.report.explain``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from finetune.commands.args import existing_path, parse_args, parse_flag, positive_int, run_command

OPTIONS = {"run": None, "inputs": None, "out": None, "topk": "5", "stage": None, "channels": "16", "filters": "true"}


def main(argv: Sequence[str] | None = None) -> int:
    """``finetune explain``: exit 0, or 2 with one ``finetune: error:`` line."""
    return run_command(_explain_command, __doc__, argv)


def _explain_command(argv: list[str]) -> None:
    args = parse_args(argv, OPTIONS, ["run", "inputs"], "finetune explain")
    topk, channels = positive_int(args["topk"], "topk"), positive_int(args["channels"], "channels")
    filters = parse_flag(args["filters"], "filters")
    existing_path(args["run"], "run", "run directory or checkpoint")
    from finetune.report.explain import ExplainOptions, explain
    from finetune.run.lock import outside, run_lock
    from finetune.run.records import find_checkpoint, run_config  # torch only once the arguments are good
    from finetune.tasks.registry import get_task

    options = ExplainOptions(topk=topk, stage=args["stage"], channels=channels, filters=filters)
    task, run_dir = get_task(run_config(args["run"]).task), find_checkpoint(args["run"])[0]
    with run_lock([run_dir], "finetune explain", outside(run_dir, args["out"])):
        index = explain(args["run"], task, args["inputs"], args["out"], options)
    for entry in index["images"]:
        print(f"{entry['image']}: {entry['summary']}")
    print(f"explanations written to {Path(index['images'][0]['folder']).parent}")
