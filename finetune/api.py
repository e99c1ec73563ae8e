"""The Python API: ``finetune.load`` opens a run directory or any export for prediction in a notebook;
``finetune.train``, ``plan`` and ``advise`` do what the commands of those names do, from Python.

import finetune
model = finetune.load("runs/2026-11-30/10-00-00")      # a run (its best checkpoint) or an export
result = model.predict(["ant.jpg", "bee.png"])         # files, Pillow images or HWC uint8 arrays
result.labels, result.probabilities                     # classification
result.masks                                            # segmentation: one class-index mask per image
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

from finetune.commands.args import compose_config, config_groups
from finetune.commands.config_errors import config_access_error
from finetune.commands.overrides import as_overrides
from finetune.data import reference
from finetune.data.images import check_image
from finetune.export.loading import LoadedExport, load_model
from finetune.run.console import console, console_is_terminal
from finetune.run.errors import ConfigError, FinetuneError
from finetune.run.keys import override_key
from finetune.run.records import run_config
from finetune.run.rundir import claim_run_dir, forget_claims, release_if_unused
from finetune.run.task import Predictions
from finetune.run.warning_filters import quiet_library_chatter
from finetune.tasks.registry import TASKS, get_task

if TYPE_CHECKING:
    from finetune.commands.advise import Advice
    from finetune.models.weights import WeightsRecord
    from finetune.training.phases import PlannedPhase

ImageInput = str | Path | Image.Image | np.ndarray


@dataclass(frozen=True)
class Model:
    """A trained model ready to predict: ``predict``, ``class_names``, ``preprocess``, ``torch_module``."""

    exported: LoadedExport

    @property
    def class_names(self) -> list[str]:
        return self.exported.class_names

    @property
    def task(self) -> str:
        return self.exported.metadata["task"]

    @property
    def metadata(self) -> dict:
        """What the export records: classes, preprocessing, backbone, weights, training."""
        return self.exported.metadata

    @property
    def torch_module(self):
        """The model as a ``torch.nn.Module`` in eval mode (a run, or a safetensors / pt2 / timm export;
        an ONNX export has none: load the run or another format)."""
        module = self.exported.torch_module
        if module is None:
            raise FinetuneError(
                f"{self.exported.path} ({self.metadata['format']}) has no torch module: "
                "load the run directory or a safetensors, pt2 or timm export"
            )
        return module

    def read(self, image: ImageInput) -> np.ndarray:
        """One input as the model's training images were read: HWC uint8 (DICOM with the run's window);
        a file first passes the image check training runs (a cut JPEG is refused, naming the file)."""
        if isinstance(image, np.ndarray):
            return image
        if isinstance(image, Image.Image):
            return reference.to_array(image)
        check_image(Path(image))
        return self.exported.read(Path(image))

    def preprocess(self, images: Sequence[ImageInput]) -> np.ndarray:
        """The model's NCHW float32 input for ``images``, exactly as in training and evaluation."""
        return self.exported.preprocess([self.read(image) for image in _as_list(images)])

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> Predictions:
        """Labels and probabilities (classification) or class-index masks (segmentation) of ``images``."""
        arrays = [self.read(image) for image in _as_list(images)]
        if not arrays:
            raise FinetuneError("predict() needs at least one image")
        return self.exported.task.predict_arrays(self.exported, arrays)


def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    return [images] if isinstance(images, (str, Path, Image.Image, np.ndarray)) else list(images)


def load(path: str | Path, weights: str | Path | None = None, allow_unverified: bool = False) -> Model:
    """A run directory (its best checkpoint), a checkpoint, an export file or export folder, ready to
    predict; ``weights``: the pretrained backbone file a head export pins to, when not where it was;
    ``allow_unverified``: open an export that records no sha256 of its tensors or model file (refused
    otherwise; only for a file whose origin you know: a change made to it since export goes unnoticed)."""
    return Model(load_model(path, weights, tasks=TASKS, allow_unverified=allow_unverified))


# --- training: finetune.train, finetune.plan, finetune.advise -------------------------------------------------

PROGRESS = ("auto", "bar", "lines")


class Run:
    """A training run's directory: ``metrics`` (its metrics.json), ``config``, ``model`` (``finetune.load`` of it),
    ``predict``, ``export`` and ``report`` (the code of ``finetune export`` and ``finetune report``)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir).expanduser()
        self._model: Model | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    @property
    def metrics(self) -> dict:
        """metrics.json: test scalars, per-class values, phases, wall time, the tested checkpoint."""
        path = self.dir / "metrics.json"
        if not path.is_file():
            raise FinetuneError(f"{path} does not exist: the run did not finish (finetune resume={self.dir})")
        return json.loads(path.read_text())

    @property
    def config(self) -> DictConfig:
        """The run's resolved config."""
        return run_config(self.dir)

    @property
    def model(self) -> Model:
        """The run's tested checkpoint, ready to predict (loaded once)."""
        if self._model is None:
            self._model = load(self.dir)
        return self._model

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> Predictions:
        """``Model.predict`` with the run's tested checkpoint."""
        return self.model.predict(images)

    def export(
        self,
        format: str,
        out: str | Path | None = None,
        overwrite: bool = False,
        images: str | Path | None = None,
        weights: str | Path | None = None,
    ) -> Path:
        """``finetune export run=<dir> format=<format> …`` (one format: head, safetensors, onnx, pt2, timm,
        torchscript), through the parity gate; prints its table and returns the file (the folder for timm)."""

        from finetune.commands.export import export
        from finetune.export.writing import print_results

        out, images, weights = (None if v is None else str(v) for v in (out, images, weights))
        results = export(self.dir, [format], out, overwrite, images, weights)
        print_results(results, console)
        return results[0].path

    def report(self) -> Path:
        """(Re)write the run's report.html (``finetune report``); its path."""
        from finetune.commands.report import report

        return Path(report(self.dir))


@dataclass(frozen=True)
class Plan:
    """What training would do (``finetune plan``): each phase with the stages it freezes, the weights it would
    load, and the printed tables as text."""

    phases: list[PlannedPhase]
    weights: WeightsRecord
    table: str = field(repr=False)

    def __str__(self) -> str:
        return self.table


def train(
    *overrides: str,
    recipe: str | None = None,
    run_dir: str | Path | None = None,
    progress: str = "auto",
    **params: object,
) -> Run:
    """Fine-tune as ``finetune <overrides>`` would (the same config, checks, run directory and code); the run.

    ``overrides``: command-line overrides (``"backbone=resnet18"``); ``recipe``: ``"classification/digits"`` for
    ``+classification=digits``; ``params``: config groups and keys, ``backbone="resnet18"``,
    ``**{"schedule.epochs": 1}``, dicts spread into dotted keys (``finetune.commands.overrides``). ``run_dir``:
    the run directory (new or empty; default ``runs/<time>_<dataset>_<backbone>``). ``progress``: ``bar`` (the
    command's), ``lines`` (one printed line per epoch) or ``auto`` (the bar on a terminal, else lines).
    A refused config or data raises ``FinetuneError`` (one line) before anything is made."""
    from finetune.commands.train import train_claimed
    from finetune.training.epoch_lines import plain_progress

    quiet_library_chatter()
    if progress not in PROGRESS:
        raise FinetuneError(f"progress={progress!r}: choose one of {', '.join(PROGRESS)}")
    args = _overrides(overrides, recipe, params)
    full = _checked(args, None if run_dir is None else str(run_dir))
    if full.plan or full.resume:
        raise FinetuneError(
            "finetune.train trains a new run: use finetune.plan(...) for a plan, and "
            "`finetune resume=<run dir>` to continue a run"
        )
    forget_claims()
    directory = None
    try:
        directory = _claim(full, run_dir)
        cfg = _without_hydra(full)
        _write_record(directory, cfg, args)
        with (
            _run_log(directory, full.hydra.job_logging.formatters.simple.format),
            plain_progress(progress == "lines" or (progress == "auto" and not console_is_terminal())),
        ):
            train_claimed(cfg, directory)
    finally:
        if directory is not None:
            release_if_unused(directory)  # refused before the run wrote anything: no clutter
        forget_claims()
    return Run(directory)


def plan(*overrides: str, recipe: str | None = None, **params: object) -> Plan:
    """What ``finetune plan <overrides>`` prints (printed here too), as a ``Plan``: nothing is loaded or written.
    Arguments as ``train``'s."""
    from rich.text import Text

    from finetune.training.plan import print_plan
    from finetune.training.train import build

    quiet_library_chatter()
    cfg = _without_hydra(_checked([*_overrides(overrides, recipe, params), "plan=true"], None))
    with console.capture() as captured:
        built = build(get_task(cfg.task), cfg)
        print_plan(cfg, built.model, built.data, built.plan, built.record)
    sys.stdout.write(captured.get())
    return Plan(built.plan, built.record, Text.from_ansi(captured.get()).plain)


def advise(*overrides: str, recipe: str | None = None, out: str | Path | None = None, **params: object) -> Advice:
    """``finetune advise <overrides> [out=…]``: linear probes by stage on your data -> freeze depth, schedule and
    learning rates; prints the report and returns it (``Advice.recommendation``; ``Advice.overrides`` train with
    it: ``finetune.train(*advice.overrides)``). Arguments as ``train``'s."""
    from finetune.commands.advise import advise as measure
    from finetune.data.files import reading_training_data

    quiet_library_chatter()
    args = _overrides(overrides, recipe, params)
    _checked(args, None)
    with reading_training_data():
        advice = measure(args, None if out is None else str(out))
    print(advice.text())
    return advice


def _overrides(positional: Sequence[str], recipe: str | None, params: Mapping[str, object]) -> list[str]:
    """The call's overrides; ``hydra.*`` keys are the command line's (but ``hydra.searchpath``: your recipes)."""
    args = as_overrides(positional, recipe, params, config_groups())
    for arg in args:
        key = override_key(arg)
        if key.startswith("hydra.") and key != "hydra.searchpath":
            raise FinetuneError(f"{arg}: the Python API sets no hydra.* keys; choose the run directory with run_dir=")
    return args


def _checked(args: list[str], run_dir: str | None) -> DictConfig:
    """The config composed once (with its ``hydra`` node), after every check of ``finetune``'s command line: a
    refusal is one FinetuneError line, raised before anything is made."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from finetune.commands.precheck import check_composed_job, check_output_location

    try:
        full = compose_config(args, with_hydra=True)  # Hydra's own refusals, as one line
        check_output_location([] if run_dir is None else [f"hydra.run.dir={run_dir}"])
        check_composed_job(args, set(full.hydra.runtime.choices), _without_hydra(full), run_dir)
    except (HydraException, OmegaConfBaseException) as err:
        message = config_access_error(err) if isinstance(err, OmegaConfBaseException) else str(err)
        raise ConfigError(" ".join(message.split())) from None
    return full


def _claim(full: DictConfig, run_dir: str | Path | None) -> Path:
    """Claim ``run_dir`` (refused if it holds anything), else make the run directory ``finetune`` would
    (``hydra.run.dir``: a new, unique name)."""
    if run_dir is not None:
        claim_run_dir(run_dir)
        return Path(run_dir).expanduser()
    return Path(str(full.hydra.run.dir))  # the unique_dir resolver makes and claims it


def _without_hydra(full: DictConfig) -> DictConfig:
    """The config a run reads: the composed one without its ``hydra`` node (as Hydra hands it to the command)."""
    cfg = full.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _write_record(run_dir: Path, cfg: DictConfig, args: list[str]) -> None:
    """``.hydra/config.yaml`` and ``overrides.yaml``, as the command line's Hydra writes them: how the run began."""
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(args), run_dir / ".hydra" / "overrides.yaml")


@contextmanager
def _run_log(run_dir: Path, line: str) -> Iterator[None]:
    """INFO and above to the run's ``finetune.log`` and to stdout while it trains, each record formatted ``line``
    (``hydra.job_logging``'s), as the command logs; not to stdout where the root logger writes to the console
    already (``logging.basicConfig``)."""
    root = logging.getLogger()
    handlers: list[logging.Handler] = [logging.FileHandler(run_dir / "finetune.log")]
    if not any(getattr(h, "stream", None) in (sys.stdout, sys.stderr) for h in root.handlers):
        handlers.append(logging.StreamHandler(sys.stdout))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(line))
    level = root.level
    root.setLevel(min(level, logging.INFO))
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield
    finally:
        root.setLevel(level)
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
