"""Predict with any export: head / full safetensors, ONNX (onnxruntime) or TorchScript.

    finetune predict export=<file or folder> inputs=<files, folders or globs> [topk=5]
                     [out=predictions.csv|.json] [overwrite=true] [batch_size=32]
                     [weights=<backbone weights file, for a head export>]

``export`` may be an export file, a folder of exports or a run directory (its ``exports/``).
``inputs`` are images (.png, .jpg, ...) or DICOM files (.dcm, .dicom); DICOM files are read with
the window the run was trained with (``dataset.window``, recorded in the export; none: each file's
own VOI LUT / window).
Images get the preprocessing recorded in the export's metadata. Probabilities are softmax over
classes, or a sigmoid per class for a multi-label model ("prediction" then lists every class with
p >= its threshold). Binary and multi-label decisions use the threshold the run was tested with
(``threshold=tune`` picks it on the validation split; default 0.5), recorded in the export. Output
goes to ``out`` (default ./predictions.csv), never over an existing file unless overwrite=true.
A segmentation export writes one mask per image instead: ``out`` is a folder (default
./predicted_masks) of ``<image stem>_mask.png`` palette PNGs whose pixel values are class indices,
predicted by sliding the export's recorded tile over the full image.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from finetune.cli import parse_args, parse_flag, positive_int, run_command
from finetune.errors import FinetuneError

console = Console(stderr=True)  # progress bars and the summary line; results go to files


@dataclass(frozen=True)
class PredictOptions:
    """How to predict and where to write: the command's arguments, for ``Task.predict_files``."""

    out: str | None = None  # None: the task's default (predictions.csv, predicted_masks/)
    overwrite: bool = False
    topk: int = 5
    batch_size: int = 32


def refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    """FinetuneError naming the first of ``paths`` (files that exist) unless ``overwrite``."""
    if paths and not overwrite:
        raise FinetuneError(f"{paths[0]} already exists; pass overwrite=true to replace it (or out=<another place>)")


def resolve_export(path: str | Path) -> Path:
    """An export file as given; in a folder (or a run directory's exports/) the first of
    head.safetensors, model.safetensors, model.onnx, model.torchscript.pt."""
    from finetune.export.formats import FORMATS

    path = Path(path).expanduser()
    if path.is_file():
        return path
    folder = path / "exports" if (path / "exports").is_dir() else path
    for spec in FORMATS.values():
        if (folder / spec.filename).is_file():
            return folder / spec.filename
    raise FinetuneError(f"no export in {path}: expected one of {', '.join(f.filename for f in FORMATS.values())} "
                        "(make one with finetune export run=<run dir>)")


def main(argv: Sequence[str] | None = None) -> int:
    """``finetune predict``: exit 0, or 2 with one ``finetune: error:`` line."""
    return run_command(_predict_command, __doc__, argv)


def _predict_command(argv: list[str]) -> None:
    args = parse_args(argv, {"export": None, "inputs": None, "topk": "5", "out": None, "overwrite": "false",
                             "batch_size": "32", "weights": None}, ["export", "inputs"], "finetune predict")
    options = PredictOptions(args["out"], parse_flag(args["overwrite"], "overwrite"),
                             positive_int(args["topk"], "topk"), positive_int(args["batch_size"], "batch_size"))
    from finetune.export.loading import find_images, load_export  # torch only once the arguments are good
    from finetune.tasks import get_task

    paths = find_images(args["inputs"])
    exported = load_export(resolve_export(args["export"]), args["weights"])
    console.print(get_task(exported.metadata["task"]).predict_files(exported, paths, options))


if __name__ == "__main__":
    sys.exit(main())
