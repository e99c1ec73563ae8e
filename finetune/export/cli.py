"""Export a trained run; each export passes a parity check on real images before it is kept.

    finetune export run=<run dir|checkpoint> [format=head,onnx] [out=<dir>] [overwrite=true]
                    [images=<files, folder or glob>] [weights=<backbone weights file>]

Formats (``format=``, comma-separated for several):

* ``head``: ``head.safetensors``, only the tensors that differ from the pretrained backbone (the new
  head and every changed backbone tensor, BatchNorm buffers included) plus metadata. Loading it
  rebuilds the backbone from its pretrained weights and refuses weights whose fingerprint (sha256
  over the unchanged tensors) differs.
* ``safetensors``: ``model.safetensors``, every tensor plus the same metadata (no pretrained weights
  needed to load it).
* ``onnx``: ``model.onnx`` (opset 17, dynamic batch axis) + ``model.onnx.json`` sidecar.
* ``torchscript``: ``model.torchscript.pt`` (``torch.jit.trace``) + ``model.torchscript.pt.json``.

Parity gate: "the export + the preprocessing its metadata records" must reproduce "the run's torch
model + the run's preprocessing" on real validation images (max |Δlogit| within the format's
tolerance, 100 % top-1 agreement: per image, or per pixel for segmentation); otherwise nothing is
written and the command fails. Segmentation ONNX exports take any height and width that are
multiples of 32; ``finetune predict`` slides the recorded tile over larger images.
Nothing is unpickled from an export: tensors are safetensors, metadata JSON.

``out`` defaults to ``<run dir>/exports``; ``images`` replaces the run's validation images for the
parity check; ``weights`` is the pretrained backbone file when the recorded one is not found.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from finetune.cli import parse_args, parse_flag, run_command

if TYPE_CHECKING:
    from finetune.export.writing import ExportResult


def print_results(results: Sequence[ExportResult], console: Console) -> None:
    """The exports written, their size and parity."""
    table = Table(title="exports (parity checked on real images)", title_justify="left")
    for column in ("format", "file", "size", "max |Δlogit|", "top-1 same"):
        table.add_column(column, justify="left" if column in ("format", "file") else "right", no_wrap=True)
    for r in results:
        table.add_row(r.format, r.path.name, f"{r.bytes / 1024:,.1f} KiB", f"{r.parity.max_abs_diff:.2g}",
                      f"{r.parity.top1_agreement:.0%} of {r.parity.images}")
    console.print(table)
    if results:
        console.print(f"written to [bold]{results[0].path.parent}[/bold]")


def main(argv: Sequence[str] | None = None) -> int:
    """``finetune export``: exit 0, or 2 with one ``finetune: error:`` line."""
    return run_command(_export_command, __doc__, argv)


def _export_command(argv: list[str]) -> None:
    args = parse_args(argv, {"run": None, "format": "head", "out": None, "overwrite": "false",
                             "images": None, "weights": None}, ["run"], "finetune export")
    from finetune.export.writing import export_run  # torch only once the arguments are good

    results = export_run(args["run"], args["format"].split(","), args["out"],
                         parse_flag(args["overwrite"], "overwrite"), args["images"], args["weights"])
    print_results(results, Console())


if __name__ == "__main__":
    sys.exit(main())
