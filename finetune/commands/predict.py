"""Predict with any export: head / full safetensors, ONNX (onnxruntime), pt2, a
timm/ folder or TorchScript.

    finetune predict export=<file or folder> inputs=<files, folders or globs>
                     [topk=5] [out=predictions.csv|.json] [overwrite=true]
                     [batch_size=32] [on_error=stop|skip]
                     [allow_unverified=true]
                     [weights=<backbone weights file, for a head export>]

``export`` may be an export file, the ``timm/`` folder, a folder of exports or a
run directory (its ``exports/``). ``inputs`` are images (.png, .jpg, ...) or
DICOM files (.dcm, .dicom); DICOM files are read with the window the run was
trained with (``dataset.window``, recorded in the export; none: each file's own
VOI LUT / window). Images get the preprocessing recorded in the export's
metadata (the export folder's preprocess.py). Probabilities are softmax over
classes, or a sigmoid per class for a multi-label model ("prediction" then lists
every class with p >= its threshold). Binary and multi-label decisions use the
threshold the run was tested with (``threshold=tune`` picks it on the validation
split; default 0.5), recorded in the export. Output goes to ``out`` (default
./predictions.csv), never over an existing file unless overwrite=true. A
segmentation export writes one mask per image instead: ``out`` is a folder
(default ./predicted_masks) of ``<image stem>_mask.png`` palette PNGs whose
pixel values are class indices, predicted by sliding the export's recorded tile
over the full image. Every input gets the image check training runs (fully
decoded; a JPEG cut short and closed with its end marker is caught).
``on_error=stop`` (default): an unreadable input stops the command before any
prediction, naming the file and why. ``on_error=skip``: the others are predicted
and the skipped ones listed (count and names) in the summary and in the output
file (CSV: rows with an empty prediction and the reason in an added ``error``
column; JSON: ``skipped``). Every export records the sha256 of its tensors
(safetensors) or of its model file (the sidecar); a file that differs is
refused, and so is one without that record unless ``allow_unverified=true``: use
that only for an export whose origin you know (one made before finetune recorded
it), as any change made to it since export then goes unnoticed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from finetune.commands.args import existing_path, parse_args, parse_flag, positive_int, run_command
from finetune.run.errors import choice, one_line

ON_ERROR = ("stop", "skip")


# finetune predict's key=value options and their defaults (None: required or unset)
OPTIONS: dict[str, str | None] = {
    "export": None,
    "inputs": None,
    "topk": "5",
    "out": None,
    "overwrite": "false",
    "batch_size": "32",
    "weights": None,
    "on_error": "stop",
    "allow_unverified": "false",
}


def main(argv: Sequence[str] | None = None) -> int:
    """``finetune predict``: exit 0, or 2 with one ``finetune: error:`` line."""
    return run_command(_predict_command, __doc__, argv)


def _predict_command(argv: list[str]) -> None:
    args = parse_args(argv, OPTIONS, ["export", "inputs"], "finetune predict")
    choice(
        "on_error", args["on_error"], ON_ERROR, "stop: an unreadable input stops the command; skip: predict the others"
    )
    allow_unverified = parse_flag(args["allow_unverified"], "allow_unverified")
    existing_path(args["export"], "export", "export file or folder")
    from finetune.data.files import find_images
    from finetune.export.predict_io import PredictOptions, console, resolve_export

    paths = find_images(args["inputs"])
    readable, skipped = _screen(paths, args["on_error"])
    options = PredictOptions(
        args["out"],
        parse_flag(args["overwrite"], "overwrite"),
        positive_int(args["topk"], "topk"),
        positive_int(args["batch_size"], "batch_size"),
        tuple((str(path), why) for path, why in skipped.items()),
    )
    from finetune.export.loading import load_export  # torch only once the arguments are good
    from finetune.tasks.registry import TASKS

    exported = load_export(
        resolve_export(args["export"]),
        args["weights"],
        tasks=TASKS,
        allow_unverified=allow_unverified,
    )
    console.print(exported.task.predict_files(exported, readable, options))
    if skipped:
        console.print(_skipped_line(list(skipped)), markup=False, highlight=False, soft_wrap=True)


def _screen(paths: list[Path], on_error: str) -> tuple[list[Path], dict[Path, str]]:
    """(readable inputs, {unreadable input: why}) by the image check training runs; with on_error=stop an
    unreadable input is one error naming it, and so is a skip that leaves nothing to predict."""
    from finetune.data.images import require_readable, unreadable_images

    if on_error == "stop":
        require_readable(paths, "repair or remove it, or pass on_error=skip to predict the other inputs")
        return paths, {}
    skipped = unreadable_images(paths)
    readable = [path for path in paths if path not in skipped]
    if not readable:
        require_readable(paths, "no input is readable, nothing to predict")
    return readable, skipped


def _skipped_line(skipped: list[Path]) -> str:
    """``skipped N unreadable input(s) (on_error=skip): a; b; ... and M more``."""
    return f"skipped {len(skipped)} unreadable input(s) (on_error=skip): " + one_line(list(map(str, skipped)))
