"""``finetune report run=<run dir>``: (re)write the run's report.html (any task:
classification, segmentation), holding the run directory's lock."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from finetune.commands.args import existing_path, parse_args, run_command

OPTIONS: dict[str, str | None] = {"run": None}  # finetune report's key=value options (run: required)


def main(argv: Sequence[str] | None = None) -> int:
    """``finetune report``: exit 0, or 2 with one ``finetune: error:`` line."""
    return run_command(_report_command, __doc__, argv)


def _report_command(argv: list[str]) -> None:
    args = parse_args(argv, OPTIONS, ["run"], "finetune report")
    existing_path(args["run"], "run", "run directory or checkpoint")
    print(f"report written to {report(args['run'])}")


def report(run: str | Path) -> Path:
    """(Re)write the report of the run directory ``run`` holding its lock (``finetune report`` and ``Run.report``
    of the Python API); its path."""
    from finetune.report.html import write_report
    from finetune.run.lock import run_lock
    from finetune.run.records import run_config  # torch only once the arguments are good
    from finetune.tasks.registry import get_task

    run_dir = Path(run).expanduser()
    task = get_task(run_config(run_dir).task)
    with run_lock([run_dir], "finetune report"):
        return write_report(run_dir, task)
