"""Export a trained run; each export passes a parity check on real images before it
is kept.

    finetune export run=<run dir|checkpoint> [format=head,onnx] [out=<dir>]
                    [overwrite=true] [images=<files, folder or glob>]
                    [weights=<backbone weights file>]

Formats (``format=``, comma-separated for several):

* ``head``: ``head.safetensors``, only the tensors that differ from the
  pretrained backbone (the new head and every changed backbone tensor, BatchNorm
  buffers included) plus metadata. Loading it rebuilds the backbone from its
  pretrained weights and refuses weights whose fingerprint (sha256 over the
  unchanged tensors) differs.
* ``safetensors``: ``model.safetensors``, every tensor plus the same metadata
  (no pretrained weights needed to load it).
* ``onnx``: ``model.onnx`` (opset 17, dynamic batch axis) + ``model.onnx.json``
  sidecar.
* ``pt2``: ``model.pt2`` (``torch.export``, dynamic batch axis) +
  ``model.pt2.json``; load it with ``torch.export.load(path).module()``.
* ``timm``: a folder ``timm/`` that plain timm opens
  (``timm.create_model("local-dir:<folder>", pretrained=True)``; segmentation:
  ``smp.from_pretrained(<folder>)``), ready to upload to the Hugging Face Hub;
  classification needs head=linear.
* ``torchscript`` (deprecated: torch deprecates torch.jit; use pt2):
  ``model.torchscript.pt``.

Every export folder also gets ``preprocess.py``: the reference preprocessing
(numpy + Pillow) the metadata's ``input`` record describes step by step. Parity
gate: "the export + that preprocess.py" must reproduce "the run's torch model +
the run's own evaluation pipeline" on real validation images (max |Δlogit|
within the format's tolerance, 100 % top-1 agreement: per image, or per pixel
for segmentation); otherwise nothing is written and the command fails.
Segmentation ONNX exports take any height and width that are multiples of 32;
``finetune predict`` slides the recorded tile over larger images. Nothing is
unpickled from safetensors and ONNX exports; pt2 and TorchScript files use
pickle: open them only from sources you trust.

``out`` defaults to ``<run dir>/exports``; ``images`` replaces the run's
validation images for the parity check; ``weights`` is the pretrained backbone
file when the recorded one is not found.

An export holds the lock of the run directory (and of an ``out`` folder outside
it) while it runs: a second export, a report or a resume of the run is refused,
naming it. Temporaries an export killed midway left there
(``.<name>.<random>.tmp``) are removed when the lock is taken.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.commands.args import existing_path, parse_args, parse_flag, run_command
from finetune.export.registry import FORMATS

if TYPE_CHECKING:
    from finetune.export.writing import ExportResult

# finetune export's key=value options and their defaults (None: required or unset)
OPTIONS: dict[str, str | None] = {
    "run": None,
    "format": "head",
    "out": None,
    "overwrite": "false",
    "images": None,
    "weights": None,
}


def main(argv: Sequence[str] | None = None) -> int:
    """``finetune export``: exit 0, or 2 with one ``finetune: error:`` line."""
    return run_command(_export_command, __doc__, argv)


def _export_command(argv: list[str]) -> None:
    args = parse_args(
        argv,
        OPTIONS,
        ["run"],
        "finetune export",
    )
    overwrite = parse_flag(args["overwrite"], "overwrite")
    formats = [FORMATS.get(name).name for name in args["format"].split(",")]
    existing_path(args["run"], "run", "run directory or checkpoint")
    from finetune.export.writing import print_results  # torch only once the arguments are good
    from finetune.run.console import console

    results = export(args["run"], formats, args["out"], overwrite, args["images"], args["weights"])
    print_results(results, console)


def export(
    run: str | Path,
    formats: Sequence[str],
    out: str | Path | None = None,
    overwrite: bool = False,
    images: str | None = None,
    weights: str | None = None,
) -> list[ExportResult]:
    """Export the run directory (or checkpoint) ``run`` in ``formats`` holding its lock (``finetune export`` and
    ``Run.export`` of the Python API); what was written."""
    from finetune.export.writing import export_run
    from finetune.run.lock import outside, run_lock
    from finetune.run.records import find_checkpoint, run_config
    from finetune.tasks.registry import get_task

    task = get_task(run_config(run).task)
    run_dir = find_checkpoint(run)[0]
    with run_lock([run_dir], "finetune export", outside(run_dir, out)):
        return export_run(run, task, formats, out, overwrite, images, weights)


if __name__ == "__main__":
    sys.exit(main())
