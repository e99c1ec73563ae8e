"""The config's schema (finetune/run/schema.py): every group and key typed when the config is composed,
each refusal one ``finetune: error:`` line before torch is imported, a run's saved config read back onto
the schema, and every shipped YAML composing against it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from finetune.commands.config_errors import unknown_key
from finetune.resources import conf_dir, recipes_dir
from finetune.run import schema
from finetune.run.config import typed_config
from finetune.run.errors import ConfigError
from finetune.run.records import resume_config, run_config
from finetune.tasks.registry import get_task
from finetune.training.validate import validate

from ..helpers import TINY, compose_config, finetune_env

SEG = ["task=segmentation", "dataset=seg_folder", "head=unet"]

# (command line, the one line after "finetune: error: "), one or more per group of the config
CASES = {
    # a value of the wrong type
    "type-dataset": (
        ["dataset.num_workers=two"],
        "dataset.num_workers=two: dataset.num_workers takes a whole number; e.g. dataset.num_workers=0",
    ),
    "type-backbone": (
        ["backbone.pretrained=maybe"],
        "backbone.pretrained=maybe: backbone.pretrained takes true or false; e.g. backbone.pretrained=true",
    ),
    "type-head": (
        ["head=mlp", "head.hidden=[a]"],
        "head.hidden[0]=a: head.hidden[0] takes a whole number; give head.hidden[0] a whole number",
    ),
    "type-schedule": (["schedule.lr=abc"], "schedule.lr=abc: schedule.lr takes a number; e.g. schedule.lr=0.005"),
    "type-phase": (
        ["schedule.phases=[{name: a, epochs: 1, lr: abc}]"],
        "schedule.phases[0].lr=abc: schedule.phases[0].lr takes a number; give schedule.phases[0].lr a number",
    ),
    "type-augment": (
        ["augment.hflip=left"],
        "augment.hflip=left: augment.hflip takes a number; e.g. augment.hflip=0.0",
    ),
    "type-trainer": (
        ["trainer.num_nodes=two"],
        "trainer.num_nodes=two: trainer.num_nodes takes a whole number; e.g. trainer.num_nodes=1",
    ),
    "type-logger": (
        ["logger.mlflow=maybe"],
        "logger.mlflow=maybe: logger.mlflow takes true or false; e.g. logger.mlflow=false",
    ),
    "type-classification": (["tta=sometimes"], "tta=sometimes: tta takes true or false; e.g. tta=false"),
    "type-segmentation": (
        [*SEG, "segmentation.overlays=many"],
        "segmentation.overlays=many: segmentation.overlays takes a whole number; e.g. segmentation.overlays=4",
    ),
    "type-top": (["seed=true"], "seed=true: seed takes a whole number; e.g. seed=0"),
    "type-ema": (
        ["ema.decay=high"],
        "ema.decay=high: ema.decay takes a number or null; give ema.decay a number or null",
    ),
    # a key the schema lacks, with the nearest one
    "unknown-dataset": (
        ["dataset.imagesize=64"],
        "dataset.imagesize=64: not a key of the config; did you mean dataset.image_size?",
    ),
    "unknown-backbone": (
        ["backbone.freez=2"],
        "backbone.freez=2: not a key of the config; did you mean backbone.freeze?",
    ),
    "unknown-head": (["head.dropot=0.1"], "head.dropot=0.1: not a key of the config; did you mean head.dropout?"),
    "unknown-schedule": (["schedule.lrr=0.1"], "schedule.lrr=0.1: not a key of the config; did you mean schedule.lr?"),
    "unknown-phase": (
        ["schedule.phases.0.lrr=0.1"],
        "schedule.phases.0.lrr=0.1: not a key of the config; did you mean schedule.phases.0.lr?",
    ),
    "unknown-augment": (
        ["augment.hflipp=0.5"],
        "augment.hflipp=0.5: not a key of the config; did you mean augment.hflip?",
    ),
    "unknown-trainer": (
        ["trainer.precission=16"],
        "trainer.precission=16: not a key of the config; did you mean trainer.precision?",
    ),
    "unknown-logger": (
        ["logger.tensorbord=false"],
        "logger.tensorbord=false: not a key of the config; did you mean logger.tensorboard?",
    ),
    "unknown-classification": (["mix.mixupp=0.2"], "mix.mixupp=0.2: not a key of the config; did you mean mix.mixup?"),
    "unknown-segmentation": (
        [*SEG, "segmentation.los=dice"],
        "segmentation.los=dice: not a key of the config; did you mean segmentation.loss?",
    ),
    "unknown-top": (["seeed=1"], "seeed=1: not a key of the config; did you mean seed?"),
    "unknown-added": (["+schedule.lrr=0.1"], "+schedule.lrr=0.1: not a key of the config; did you mean schedule.lr?"),
    "unknown-kind": (
        ["dataset.crop_size=64"],
        "dataset.crop_size=64: dataset.crop_size is a key of dataset=seg_folder|drive|streaming, and this run's "
        "dataset is digits; remove it, or choose dataset=seg_folder",
    ),
    # Lightning Trainer arguments finetune sets from its own keys
    "lightning-max_epochs": (
        ["trainer.max_epochs=1"],
        "trainer.max_epochs=1: finetune sets Lightning's max_epochs itself (each phase runs its epochs); use "
        "schedule.epochs=1 (or a phase's schedule.phases.<i>.epochs)",
    ),
    "lightning-checkpointing": (
        ["trainer.enable_checkpointing=false"],
        "trainer.enable_checkpointing=false: finetune sets Lightning's enable_checkpointing itself (every epoch is "
        "checkpointed: resume needs it); use checkpoints.keep=best|last|both to choose what a finished run keeps",
    ),
    "lightning-logger": (
        ["trainer.logger=false"],
        "trainer.logger=false: finetune sets Lightning's logger itself (the loggers are a config group); use "
        "logger=csv|tensorboard|mlflow|wandb|many",
    ),
    "lightning-fast_dev_run": (
        ["trainer.fast_dev_run=true"],
        "trainer.fast_dev_run=true: finetune sets Lightning's fast_dev_run itself (a smoke run goes through the "
        "whole run); use trainer=debug (2 batches of every phase, validation and test, then the exports)",
    ),
    "lightning-root_dir": (
        ["trainer.default_root_dir=out"],
        "trainer.default_root_dir=out: finetune sets Lightning's default_root_dir itself (the run directory is "
        "Hydra's); use hydra.run.dir=out",
    ),
    "lightning-progress": (
        ["trainer.enable_progress_bar=false"],
        "trainer.enable_progress_bar=false: finetune sets Lightning's enable_progress_bar itself (the progress bar "
        "is finetune's); use trainer.progress_bar=false",
    ),
    # a key of the other task
    "task-mix": (
        [*SEG, "mix.mixup=0.2"],
        "mix.mixup=0.2: mix.mixup is a key of task=classification, and this run is task=segmentation; remove it, "
        "or choose task=classification (mixup and cutmix blend whole images that carry one label each, not masks)",
    ),
    "task-threshold": (
        [*SEG, "threshold=tune"],
        "threshold=tune: threshold is a key of task=classification, and this run is task=segmentation; remove it, "
        "or choose task=classification (segmentation gives each pixel the argmax class and picks the checkpoint by "
        "monitor=dice|miou; segmentation.class_weights=true favours rare classes)",
    ),
    "task-imbalance": (
        [*SEG, "imbalance=auto"],
        "imbalance=auto: imbalance is a key of task=classification, and this run is task=segmentation; remove it, "
        "or choose task=classification (for segmentation use segmentation.class_weights=true: class weights from "
        "pixel frequencies)",
    ),
    "task-init_from": (
        [*SEG, "init_from=runs/old"],
        "init_from=runs/old: init_from is a key of task=classification, and this run is task=segmentation; remove "
        "it, or choose task=classification (a decoder has no per-class rows to copy by name: segmentation starts "
        "from the pretrained encoder)",
    ),
    "task-class_weights": (
        ["segmentation.class_weights=true"],
        "segmentation.class_weights=true: segmentation.class_weights is a key of task=segmentation, and this run is "
        "task=classification; remove it, or choose task=segmentation (for classification use "
        "imbalance=weighted_loss: class weights from the label counts)",
    ),
    "task-segmentation": (
        ["segmentation.loss=dice"],
        "segmentation.loss=dice: segmentation.loss is a key of task=segmentation, and this run is "
        "task=classification; remove it, or choose task=segmentation",
    ),
    "task-recipe": (
        ["task=segmentation", "+medical=blood"],
        "imbalance (in medical/blood.yaml): imbalance is a key of task=classification, and this run is "
        "task=segmentation; remove it, or choose task=classification (for segmentation use "
        "segmentation.class_weights=true: class weights from pixel frequencies)",
    ),
    # a required value nothing sets
    "missing-phase": (
        ["schedule.phases=[{name: a}]"],
        "schedule.phases[0].epochs=???: a required value is not set; set it to a whole number: "
        "schedule.phases.0.epochs=…",
    ),
    "missing-referenced": (  # every phase reads ${schedule.lr}: the key left unset is named, not a phase's
        ["schedule.lr=???"],
        "schedule.lr=???: a required value is not set; set it to a number: schedule.lr=…",
    ),
    "missing-backbone": (
        ["backbone.name=???"],
        "backbone.name=???: a required value is not set; set it to a word: backbone.name=…",
    ),
    # keys that take a number or a word: their own value checks
    "value-limit": (
        ["trainer.limit_train_batches=abc"],
        "trainer.limit_train_batches='abc': a number of batches (a whole number, e.g. 2), a fraction of them (a "
        "number in [0, 1], e.g. 0.25), or null for all",
    ),
    "value-threshold": (
        ["threshold=2"],
        "threshold=2: use a probability in (0, 1) or threshold=tune (tuned on the validation split)",
    ),
    "value-phase-freeze": (
        ["schedule.phases.0.freeze=[1]"],
        "schedule.phases[0].freeze=[1] (phase 'finetune') is not a depth: use a whole number of stages (0: train "
        "all, k: freeze stem + first k, -k: train only the last k) or all (linear probe)",
    ),
    "value-backbone-freeze": (  # the phase reads ${backbone.freeze}: the key the value came from is named
        ["backbone.freeze=[1]"],
        "backbone.freeze=[1] (phase 'finetune') is not a depth: use a whole number of stages (0: train all, k: "
        "freeze stem + first k, -k: train only the last k) or all (linear probe)",
    ),
    "value-decoder": (
        [*SEG, "head.decoder_attention_type=cbam"],
        "head.decoder_attention_type='cbam' is not known: choose one of scse (or null: smp's default)",
    ),
    "value-atrous-rates": (
        ["task=segmentation", "dataset=seg_folder", "head=deeplabv3plus", "head.decoder_atrous_rates=[6,12]"],
        "head.decoder_atrous_rates=[6,12]: the dilations of the three ASPP branches, three whole numbers >= 1 (e.g. "
        "[6,12,18]), or null for smp's [12,24,36]",
    ),
    "phase-index": (
        ["schedule.phases.5.lr=0.1"],
        "schedule.phases.5.lr=0.1: schedule.phases has 1 phase(s) (0..0); use one of those indices, or give the "
        "whole list: schedule.phases=[…]",
    ),
    "phase-index-emptied": (  # the list as the command line left it, not as the schedule group wrote it
        ["schedule.phases=[]", "schedule.phases.0.lr=1"],
        "schedule.phases.0.lr=1: schedule.phases has 0 phase(s); give the whole list: schedule.phases=[…]",
    ),
    "reference": (
        ["schedule.lr=${nothing}"],
        "schedule.lr=${nothing}: Interpolation key 'nothing' not found; fix or remove the ${…} reference",
    ),
    # a sweep's shared overrides are checked before any job
    "sweep": (
        ["-m", "schedule.lr=0.1,0.01", "trainer.max_epochs=2"],
        "trainer.max_epochs=2: finetune sets Lightning's max_epochs itself (each phase runs its epochs); use "
        "schedule.epochs=2 (or a phase's schedule.phases.<i>.epochs)",
    ),
    "sweep-groups": (  # each combination of the swept groups is checked: the second job's dataset has no root
        ["-m", "dataset=imagefolder,digits", "dataset.root=.", "plan=true"],
        "dataset.root=.: dataset.root is a key of dataset=imagefolder|csv|medmnist|dicom_folder|seg_folder|drive, "
        "and this run's dataset is digits; remove it, or choose dataset=imagefolder",
    ),
}

# Every case in one process: the exit code, stderr and the heavy modules imported by then.
PROBE = """
import contextlib, io, json, sys, traceback
from finetune.cli import main
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except BaseException:
            traceback.print_exc()
            code = None
    heavy = sorted(m for m in ("torch", "lightning", "timm") if m in sys.modules)
    results.append({"code": code, "stderr": err.getvalue(), "heavy": heavy})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict[str, dict]:
    """Each case of ``CASES`` as ``finetune <args>`` run in one fresh process (cwd: an empty folder)."""
    cwd = tmp_path_factory.mktemp("refusals")
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([args for args, _ in CASES.values()])],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=finetune_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert list(cwd.iterdir()) == []  # no run directory for any of them
    return dict(zip(CASES, json.loads(out.stdout.splitlines()[-1])))


@pytest.mark.parametrize("case", list(CASES))
def test_a_config_error_is_one_line_before_torch_is_imported(refusals, case):
    result, (_, message) = refusals[case], CASES[case]
    assert result["code"] == 2, result["stderr"]
    assert result["stderr"] == f"finetune: error: {message}\n"  # the whole of stderr: no traceback
    assert result["heavy"] == []


def test_the_schema_is_registered_for_whatever_composes_in_a_fresh_process(tmp_path):
    """Hydra's compose API over ``conf_dir()``, as tests and tools use it, and the ``finetune`` command."""
    code = (
        "from hydra import compose, initialize_config_dir\n"
        "from omegaconf import OmegaConf\n"
        "from finetune.resources import conf_dir\n"
        "with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):\n"
        "    cfg = compose(config_name='config', overrides=['task=segmentation', 'dataset=seg_folder', 'head=unet'])\n"
        "print(*(OmegaConf.get_type(n).__name__ for n in (cfg, cfg.dataset, cfg.head, cfg.schedule.phases[0])))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["SegmentationSchema", "SegFolderSchema", "UnetHeadSchema", "PhaseSchema"]
    job = subprocess.run(
        [sys.executable, "-m", "finetune", "--cfg", "job", *SEG], cwd=tmp_path, capture_output=True, text=True
    )
    assert job.returncode == 0, job.stderr[-2000:]
    printed = OmegaConf.create(job.stdout)
    assert printed.task == "segmentation" and "segmentation" in printed and "mix" not in printed


def _yaml_names(root: Path) -> list[str]:
    return sorted(f"{p.parent.name}={p.stem}" for p in root.glob("*/*.yaml"))


SEGMENTATION_ONLY = {f"dataset={k}" for k in get_task("segmentation").datasets} | {
    f"head={k}" for k in get_task("segmentation").heads
}


@pytest.mark.parametrize("option", _yaml_names(conf_dir()) + [f"+{name}" for name in _yaml_names(recipes_dir())])
def test_every_shipped_yaml_composes_against_the_schema(option):
    """Each option of every group and every recipe: typed nodes, nothing left unset, the value checks pass."""
    group = option.split("=")[0]
    if option == "task=segmentation" or option in SEGMENTATION_ONLY:
        options = [o for o in SEG if o.split("=")[0] != group]
    else:
        options = []
    cfg = compose_config(*options, option)
    assert OmegaConf.get_type(cfg) is schema.TASKS[cfg.task]
    assert OmegaConf.get_type(cfg.dataset) is schema.KINDS["dataset"][cfg.dataset.kind]
    assert OmegaConf.get_type(cfg.head) is schema.KINDS["head"][cfg.head.kind]
    assert all(OmegaConf.get_type(p) is schema.PhaseSchema for p in cfg.schedule.phases)
    assert OmegaConf.missing_keys(cfg) == set()
    for name, logger in cfg.logger.items():
        if logger is True and name in ("mlflow", "wandb") and importlib.util.find_spec(name) is None:
            pytest.skip(f"{option} needs {name}, which is not installed here")
    validate(cfg, get_task(cfg.task))


def test_every_kind_of_the_registries_has_a_schema_and_a_yaml():
    from finetune.data import DATASETS
    from finetune.models import DECODERS, HEADS

    assert set(schema.KINDS["dataset"]) == set(DATASETS) == {p.stem for p in (conf_dir() / "dataset").glob("*.yaml")}
    assert set(schema.KINDS["head"]) == {*HEADS, *DECODERS} == {p.stem for p in (conf_dir() / "head").glob("*.yaml")}
    assert set(schema.TASKS) == {p.stem for p in (conf_dir() / "task").glob("*.yaml")}


@pytest.mark.parametrize("kind", list(schema.KINDS["dataset"]))
def test_each_dataset_schema_declares_the_keys_its_kind_reads(kind):
    """The schema of a dataset kind and the data layer's config class of that kind hold the same keys."""
    from dataclasses import fields

    from finetune.data import DATASETS

    declared = {f.name for f in fields(schema.KINDS["dataset"][kind])}
    assert declared == {f.name for f in fields(DATASETS[kind].config_class())}


# --- saved configs written before keys existed -------------------------------------------------------

ADDED_LATER = [
    "backbone.adapter",
    "backbone.adapter_rank",
    "backbone.adapter_alpha",
    "backbone.adapter_targets",
    "schedule.early_stop",
    "augment.clahe",
    "augment.clahe_clip",
    "checkpoints",
    "ema",
    "logger",
    "loss",
    "mix",
    "calibration",
    "tta",
]


def _old_run(run_dir: Path, *overrides: str) -> Path:
    """A run directory whose config.yaml an older finetune wrote: later keys absent, every task's keys at the
    top (as configs held them before each task owned its keys), phases without the schedule's keys."""
    cfg = OmegaConf.to_container(compose_config(*overrides), resolve=True)
    for key in ADDED_LATER:
        parent, _, name = key.rpartition(".")
        (cfg[parent] if parent else cfg).pop(name, None)
    cfg["schedule"]["phases"] = [{k: p[k] for k in ("name", "epochs", "freeze")} for p in cfg["schedule"]["phases"]]
    cfg.setdefault("segmentation", {"loss": "ce_dice", "class_weights": False, "overlays": 4})
    cfg.setdefault("threshold", 0.5)
    cfg.setdefault("imbalance", "none")
    (run_dir / "checkpoints").mkdir(parents=True)
    for name in ("checkpoints/best.ckpt", "data.json", "weights.json"):
        (run_dir / name).write_text("{}")
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return run_dir


def test_an_old_saved_config_reads_back_with_the_defaults_of_later_keys(tmp_path):
    run = _old_run(tmp_path / "run", *TINY)
    for cfg in (run_config(run), resume_config(run, compose_config(*TINY), ["trainer.devices=1"])):
        assert OmegaConf.get_type(cfg) is schema.ClassificationSchema
        assert (
            cfg.backbone.adapter == "none" and cfg.backbone.adapter_rank == 8 and cfg.backbone.adapter_targets is None
        )
        assert cfg.schedule.early_stop.patience is None and cfg.checkpoints.keep == "best" and cfg.ema.decay is None
        assert cfg.logger.tensorboard is True and cfg.logger.experiment == "finetune"
        assert cfg.mix.mixup == 0.0 and cfg.loss.label_smoothing == 0.0 and cfg.calibration == "none"
        assert "segmentation" not in cfg  # the other task's keys of the old shared layout are dropped
        phase = cfg.schedule.phases[0]  # a phase without the schedule's keys reads them
        assert (phase.lr, phase.optimizer, phase.freeze) == (cfg.schedule.lr, cfg.schedule.optimizer, "all")
        validate(cfg, get_task(cfg.task))


def test_an_old_segmentation_config_drops_the_classification_keys_it_held(tmp_path):
    run = _old_run(tmp_path / "run", *SEG, "dataset.root=x", "dataset.class_names=[a,b]")
    cfg = run_config(run)
    assert OmegaConf.get_type(cfg) is schema.SegmentationSchema and cfg.segmentation.loss == "ce_dice"
    assert not {"threshold", "imbalance", "mix", "loss"} & set(cfg)


def test_a_saved_config_with_a_key_no_schema_knows_is_refused_naming_the_file(tmp_path):
    run = _old_run(tmp_path / "run", *TINY)
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "colour: blue\n")
    with pytest.raises(Exception, match=rf"^{run / 'config.yaml'}: colour: Key 'colour' not in 'ClassificationSchema'"):
        run_config(run)


def test_a_saved_config_without_a_required_value_is_refused_naming_the_key_and_the_file(tmp_path):
    run = _old_run(tmp_path / "run", *TINY)
    saved = OmegaConf.load(run / "config.yaml")
    del saved.schedule["lr"]
    (run / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    with pytest.raises(ConfigError) as refused:
        run_config(run)
    assert str(refused.value) == (
        f"{run / 'config.yaml'}: schedule.lr=???: a required value is not set; set it to a number: schedule.lr=…"
    )


# --- head options: smp's decoder options, null for smp's default ----------------------------------------


def test_a_decoder_option_reaches_smp_and_a_null_one_is_left_to_smp():
    from segmentation_models_pytorch.base.modules import SCSEModule

    from finetune.models.factory import decoder_model, head_options
    from finetune.models.weights import resolve_weights

    record = resolve_weights("resnet10t", pretrained=False)
    small = "head.decoder_channels=[16,16,16,16,16]"
    cfg = compose_config(*SEG, small, "head.decoder_attention_type=scse")
    assert cfg.head.decoder_interpolation is None and cfg.head.decoder_use_norm is None
    assert head_options(cfg) == {"decoder_channels": [16] * 5, "decoder_attention_type": "scse"}  # no None
    attention = [m for m in decoder_model(cfg, record, 3, 2).modules() if isinstance(m, SCSEModule)]
    assert len(attention) == 10  # two per decoder block
    plain = decoder_model(compose_config(*SEG, small), record, 3, 2)
    assert not any(isinstance(m, SCSEModule) for m in plain.modules())


@pytest.mark.parametrize(
    "options",
    [
        ["head=unet", "head.decoder_use_norm=identity", "head.decoder_interpolation=bilinear"],
        ["head=fpn", "head.decoder_merge_policy=cat", "head.decoder_interpolation=bilinear"],
        [
            "head=deeplabv3plus",
            "head.decoder_atrous_rates=[6,12,18]",
            "head.decoder_aspp_separable=false",
            "head.decoder_aspp_dropout=0.1",
        ],
    ],
)
def test_each_decoders_smp_options_compose_validate_and_build(options):
    import torch

    from finetune.models.factory import decoder_model
    from finetune.models.weights import resolve_weights

    cfg = compose_config("task=segmentation", "dataset=seg_folder", *options, "schedule.batch_size=2")
    validate(cfg, get_task("segmentation"))
    model = decoder_model(cfg, resolve_weights("resnet10t", pretrained=False), 3, 2).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_a_decoder_option_smp_refuses_is_named_as_an_option_not_blamed_on_the_backbone():
    from finetune.models.factory import decoder_model
    from finetune.models.weights import resolve_weights
    from finetune.run.errors import FinetuneError

    cfg = compose_config(*SEG, "head.decoder_channels=[16,16,16,16]")  # four blocks for a depth-5 encoder
    with pytest.raises(FinetuneError) as refused:
        decoder_model(cfg, resolve_weights("resnet10t", pretrained=False), 3, 2)
    assert str(refused.value) == (
        "smp cannot build head=unet on backbone resnet10t: Model depth is 5, but you provide `decoder_channels` for "
        "4 blocks; fix the head.* option it names, or try a CNN backbone such as resnet18 or efficientnet_lite0"
    )


# --- a task of its own (how the test-only third task plugs in) -----------------------------------------


@dataclass
class ToyOptions:
    level: int = 3


@dataclass
class ToySchema(schema.FinetuneSchema):
    toy: ToyOptions = field(default_factory=ToyOptions)


def test_a_new_task_is_a_yaml_file_naming_its_registered_schema(tmp_path):
    conf = shutil.copytree(conf_dir(), tmp_path / "conf", ignore=shutil.ignore_patterns("__pycache__"))
    (conf / "task" / "toy.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /schema_task_toy@_here_\n  - _self_\n\ntask: toy\ntoy:\n  level: 5\n"
    )
    schema.register_task_schema("toy", ToySchema)
    try:
        with initialize_config_dir(config_dir=str(conf), version_base=None):
            cfg = compose(config_name="config", overrides=["task=toy", "toy.level=7"])
            with pytest.raises(Exception, match="mix"):
                compose(config_name="config", overrides=["task=toy", "mix.mixup=0.2"])
        assert OmegaConf.get_type(cfg) is ToySchema and cfg.toy.level == 7 and "threshold" not in cfg
        saved = typed_config({**OmegaConf.to_container(compose_config(), resolve=True), "task": "toy"})
        assert saved.toy.level == 3 and "threshold" not in saved  # the schema's default; classification's keys dropped
        assert unknown_key("toy.level=1", "toy.level", compose_config(), "classification").startswith(
            "toy.level=1: toy.level is a key of task=toy, and this run is task=classification"
        )
    finally:
        schema.TASKS.pop("toy")
