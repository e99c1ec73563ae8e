"""Predict with any export: head / full safetensors, ONNX (onnxruntime), pt2, a timm/ folder or TorchScript.

    finetune predict export=<file or folder> inputs=<files, folders or globs> [topk=5]
                     [out=predictions.csv|.json] [overwrite=true] [batch_size=32]
                     [weights=<backbone weights file, for a head export>]

``export`` may be an export file, the ``timm/`` folder, a folder of exports or a run directory (its ``exports/``).
``inputs`` are images (.png, .jpg, ...) or DICOM files (.dcm, .dicom); DICOM files are read with
the window the run was trained with (``dataset.window``, recorded in the export; none: each file's
own VOI LUT / window).
Images get the preprocessing recorded in the export's metadata (the export folder's preprocess.py). Probabilities are softmax over
classes, or a sigmoid per class for a multi-label model ("prediction" then lists every class with
p >= its threshold). Binary and multi-label decisions use the threshold the run was tested with
(``threshold=tune`` picks it on the validation split; default 0.5), recorded in the export. Output
goes to ``out`` (default ./predictions.csv), never over an existing file unless overwrite=true.
A segmentation export writes one mask per image instead: ``out`` is a folder (default
./predicted_masks) of ``<image stem>_mask.png`` palette PNGs whose pixel values are class indices,
predicted by sliding the export's recorded tile over the full image.
"""
from __future__ import annotations

from collections.abc import Sequence

from finetune.commands.args import parse_args, parse_flag, positive_int, run_command


def main(argv: Sequence[str] | None = None) -> int:
    """``finetune predict``: exit 0, or 2 with one ``finetune: error:`` line."""
    return run_command(_predict_command, __doc__, argv)


def _predict_command(argv: list[str]) -> None:
    args = parse_args(argv, {"export": None, "inputs": None, "topk": "5", "out": None, "overwrite": "false",
                             "batch_size": "32", "weights": None}, ["export", "inputs"], "finetune predict")
    from finetune.export.predict import PredictOptions, console, resolve_export

    options = PredictOptions(args["out"], parse_flag(args["overwrite"], "overwrite"),
                             positive_int(args["topk"], "topk"), positive_int(args["batch_size"], "batch_size"))
    from finetune.export.loading import find_images, load_export  # torch only once the arguments are good
    from finetune.tasks.registry import get_task

    paths = find_images(args["inputs"])
    exported = load_export(resolve_export(args["export"]), args["weights"])
    console.print(get_task(exported.metadata["task"]).predict_files(exported, paths, options))
