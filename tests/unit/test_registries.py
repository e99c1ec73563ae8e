"""Every entry of every registry builds what it says; an unknown name is one line with the choices and the
nearest one. Tiny tensors and models, no training."""

from __future__ import annotations

import importlib.util
import inspect
import math
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf
from torch import nn

from finetune.data import DATASETS
from finetune.export.registry import FORMATS
from finetune.models import ADAPTERS, DECODERS, HEADS
from finetune.models.adapters import AdapterSpec
from finetune.models.backbones import build_stage_map
from finetune.models.weights import resolve_weights
from finetune.run import OPTIMIZERS, SCHEDULERS
from finetune.run.errors import ConfigError
from finetune.run.registry import Entry, Registry, resolve
from finetune.run.schema import KINDS, LoggerSchema
from finetune.tasks.registry import TASKS
from finetune.training.loggers import LOGGERS, LogContext

from ..helpers import compose_config, squares


def _group(group: str, name: str, *overrides: str) -> dict:
    """The ``group`` of the config composed with ``group=name`` (``conf/<group>/<name>.yaml``), as a dict."""
    values = OmegaConf.to_container(compose_config(f"{group}={name}", *overrides)[group], resolve=True)
    assert values["kind"] == name
    return values


def _head_options(name: str) -> dict:
    """The options ``head=<name>`` gives the builder (every key but ``kind``; a null one is left out)."""
    return {k: v for k, v in _group("head", name).items() if k != "kind" and v is not None}


# --- the registry type ---------------------------------------------------------------------------


def test_a_registry_is_a_mapping_in_registration_order_that_refuses_a_name_twice():
    first, second = Entry("b", "the first"), Entry("a", "the second")
    registry = Registry("thing.kind", [first, second])
    assert list(registry) == ["b", "a"] and registry["a"] is second and registry.get("b") is first
    assert "a" in registry and "c" not in registry and len(registry) == 2
    with pytest.raises(ValueError, match="'b' is registered twice"):
        Registry("thing.kind", [first, Entry("b", "again")])


def test_an_unknown_name_without_a_near_one_lists_the_choices_under_the_key_asked_for():
    with pytest.raises(ConfigError) as error:
        HEADS.get("transformer", key="head")
    assert str(error.value) == "head='transformer' is not known: choose one of linear, mlp"
    with pytest.raises(ConfigError, match=r"^backbone.adapter=\['lora'\] is not known: choose one of none, lora"):
        ADAPTERS.get(["lora"])  # a list from the command line: refused, not a TypeError


# --- unknown names, per registry: the exact one-line message -----------------------------------------

UNKNOWN = [
    (HEADS, "mpl", "head.kind='mpl' is not known: choose one of linear, mlp (did you mean mlp?)"),
    (
        DECODERS,
        "unett",
        "head.kind='unett' is not known: choose one of unet, fpn, deeplabv3plus (did you mean unet?)",
    ),
    (
        ADAPTERS,
        "lorax",
        "backbone.adapter='lorax' is not known: choose one of none, lora, dora, bitfit (did you mean lora?)",
    ),
    (OPTIMIZERS, "adam", "schedule.optimizer='adam' is not known: choose one of adamw, sgd (did you mean adamw?)"),
    (
        SCHEDULERS,
        "cosin",
        "schedule.scheduler='cosin' is not known: choose one of constant, cosine, warmup_cosine, step, onecycle, "
        "plateau (did you mean cosine?)",
    ),
    (
        DATASETS,
        "imagefolders",
        "dataset.kind='imagefolders' is not known: choose one of digits, imagefolder, csv, medmnist, dicom_folder, "
        "seg_folder, drive, streaming (did you mean imagefolder?)",
    ),
    (
        LOGGERS,
        "tensorbord",
        "logger='tensorbord' is not known: choose one of csv, tensorboard, mlflow, wandb (did you mean tensorboard?)",
    ),
    (
        FORMATS,
        "onxx",
        "format='onxx' is not known: choose one of head, safetensors, onnx, torchscript (deprecated: use pt2), pt2, "
        "timm (did you mean onnx?); several comma-separated, e.g. format=head,onnx",
    ),
]


@pytest.mark.parametrize("registry,name,message", UNKNOWN, ids=[r.key + ":" + n for r, n, _ in UNKNOWN])
def test_an_unknown_name_is_one_line_with_the_choices_and_the_nearest(registry, name, message):
    with pytest.raises(ConfigError) as error:
        registry.get(name)
    assert str(error.value) == message and "\n" not in message


# --- heads and decoders: a module with the right output shape ------------------------------------


@pytest.mark.parametrize("name", list(HEADS))
def test_each_head_maps_pooled_features_to_one_logit_per_class(name):
    head = HEADS.get(name).build(8, 3, **_head_options(name))
    assert isinstance(head, nn.Module)
    assert head.eval()(torch.randn(2, 8)).shape == (2, 3)


@pytest.mark.parametrize("name", list(DECODERS))
def test_each_decoder_maps_an_image_to_per_pixel_logits_at_its_size(name):
    torch.manual_seed(0)
    model = DECODERS.get(name).build(resolve_weights("resnet10t", pretrained=False), 3, 2, **_head_options(name))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 96)).shape == (1, 2, 64, 96)
    assert {model.stage_of(n) for n, _ in model.named_parameters()} >= {"stem", "stage1", "head"}


# --- adapters: attached to a tiny timm model, they change which parameters train ---------------------


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_each_adapter_changes_which_backbone_parameters_train(name):
    backbone = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    pretrained = {n for n, _ in backbone.named_parameters()}
    adapter = ADAPTERS.get(name).attach(backbone, build_stage_map(backbone), AdapterSpec(name, rank=2), "resnet10t")
    now = {n for n, _ in backbone.named_parameters()}
    if name == "none":
        assert adapter is None and now == pretrained
        return
    trains = {n for n in now if adapter.trains(n)}
    assert trains and adapter.parameters == sum(p.numel() for n, p in backbone.named_parameters() if n in trains)
    if name == "bitfit":  # no new tensors: the biases and norm parameters of the pretrained model
        assert now == pretrained and not adapter.added and trains < pretrained
        norms = {m for m, module in backbone.named_modules() if isinstance(module, nn.BatchNorm2d)}
        assert all(n.endswith(".bias") or n.rpartition(".")[0] in norms for n in trains)
    else:  # new low-rank tensors only (peft moves each adapted weight under base_layer); DoRA adds magnitudes
        assert trains == adapter.added and trains <= now - pretrained and adapter.targets
        assert all(".lora_" in n for n in trains)
        assert any("lora_magnitude" in n for n in trains) == (name == "dora")


# --- optimizers and schedulers over a tiny model -------------------------------------------------

OPTIMIZER_TYPES = {"adamw": (torch.optim.AdamW, False), "sgd": (torch.optim.SGD, True)}  # name -> (type, nesterov)


def test_every_optimizer_has_an_expectation():
    assert set(OPTIMIZER_TYPES) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_updates_named_groups_at_their_own_rate(name):
    model = nn.Linear(2, 1)
    groups = [{"params": [model.weight], "lr": 0.1, "name": "stage4"}, {"params": [model.bias], "lr": 0.5}]
    optimizer = OPTIMIZERS.get(name).build(groups, momentum=0.9)
    kind, nesterov = OPTIMIZER_TYPES[name]
    assert type(optimizer) is kind and optimizer.defaults.get("nesterov", False) is nesterov
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.5] and optimizer.param_groups[0]["name"] == "stage4"
    before = model.weight.detach().clone()
    model(torch.ones(4, 2)).sum().backward()
    optimizer.step()
    assert not torch.equal(model.weight, before)


TOTAL, WARMUP = 12, 4


def _cosine(start: float, end: float, progress: float) -> float:
    return end + (start - end) / 2 * (1 + math.cos(math.pi * progress))


def _onecycle(step: int) -> float:
    """torch's one-cycle policy, written out: from 1/25 up to 1 over the warm-up (steps 0..3), then down to
    1/25/1e4 at the last step."""
    peak = WARMUP - 1
    if step <= peak:
        return _cosine(1 / 25, 1.0, step / peak)
    return _cosine(1.0, 1 / 25 / 1e4, (step - peak) / (TOTAL - 1 - peak))


# name -> (interval, monitor, lr after k scheduler steps with a base lr of 1; plateau: val/loss never improves)
SCHEDULES = {
    "constant": ("step", None, lambda k: 1.0),
    "cosine": ("step", None, lambda k: _cosine(1.0, 0.0, k / TOTAL)),
    "warmup_cosine": (
        "step",
        None,
        lambda k: (k + 1) / WARMUP if k < WARMUP else _cosine(1.0, 0.0, (k - WARMUP) / (TOTAL - WARMUP)),
    ),
    "step": ("step", None, lambda k: 1.0 if k < 4 else 0.1 if k < 8 else 0.01),
    "onecycle": ("step", None, _onecycle),
    "plateau": ("epoch", "val/loss", lambda k: 1.0 if k < 4 else 0.1 ** (1 + (k - 4) // 3)),  # x0.1: 3 bad epochs
}


def test_every_scheduler_has_an_expectation():
    assert set(SCHEDULES) == set(SCHEDULERS)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_each_scheduler_follows_its_schedule_and_says_how_lightning_steps_it(name):
    interval, monitor, expected = SCHEDULES[name]
    weight = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [weight], "lr": 1.0}], momentum=0.9)
    config = SCHEDULERS.get(name).build(optimizer, TOTAL, WARMUP)
    assert config["interval"] == interval and config.get("monitor") == monitor
    seen = []
    for _ in range(TOTAL):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        config["scheduler"].step(*([1.0] if monitor else []))
    assert seen == pytest.approx([expected(k) for k in range(TOTAL)], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("total", [1, 2, 3, 100])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_each_scheduler_steps_through_a_run_of_very_few_steps(name, total):
    """A tiny dataset gives a phase one to three optimizer steps: every scheduler takes them with finite lrs
    (torch's OneCycleLR divides by zero below three steps, and when its rise is one step: 1 % of 100)."""
    weight = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [weight], "lr": 1.0}], momentum=0.9)
    config = SCHEDULERS.get(name).build(optimizer, total, 1)
    for _ in range(total):
        lr = optimizer.param_groups[0]["lr"]  # the lr this step trains with
        assert math.isfinite(lr) and lr > 0
        optimizer.step()
        config["scheduler"].step(*([1.0] if config.get("monitor") else []))


# --- dataset kinds -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DATASETS))
def test_each_dataset_kind_feeds_a_task_and_names_its_config_class_and_loader(name):
    kind = DATASETS.get(name)
    assert kind.task in TASKS and name in TASKS[kind.task].datasets
    config_class = kind.config_class()
    assert is_dataclass(config_class) and "kind" in {f.name for f in fields(config_class)}
    names = ["dataset.class_names=[background,thing]"] if name == "seg_folder" else []  # index masks name them
    assert config_class.from_mapping(_group("dataset", name, *names)).kind == name  # dataset=<kind> reads into it
    loader = resolve(kind.loader)
    assert callable(loader) and len(inspect.signature(loader).parameters) == 1  # (config) -> the task's data


def test_every_task_takes_exactly_the_dataset_kinds_that_name_it():
    assert {name: set(task.datasets) for name, task in TASKS.items()} == {
        name: {k for k in DATASETS if name in DATASETS[k].tasks()} for name in TASKS
    }


def test_the_config_schema_knows_every_dataset_and_head_kind_by_the_same_name():
    assert list(KINDS["dataset"]) == list(DATASETS)
    assert list(KINDS["head"]) == [*HEADS, *DECODERS]


def test_a_dataset_kind_entry_loads_its_data(tmp_path):
    digits = DATASETS.get("digits")
    source = digits.load(digits.config_class().from_mapping({"kind": "digits"}))
    assert source.class_names == [str(d) for d in range(10)] and source.image_channels == 1
    squares(tmp_path, n=6)
    folder = DATASETS.get("seg_folder")
    config = folder.config_class().from_mapping({"kind": "seg_folder", "root": str(tmp_path), "mask_mode": "binary"})
    splits = folder.load(config)
    assert set(splits) >= {"train", "val"} and len({p.image for pairs in splits.values() for p in pairs}) == 6


# --- loggers -------------------------------------------------------------------------------------

LOGGER_TYPES = {  # name -> (Lightning logger class, its log folder under the run directory, or None)
    "csv": ("CSVLogger", Path("logs/probe")),
    "tensorboard": ("TensorBoardLogger", Path("tensorboard/probe")),
    "mlflow": ("MLFlowLogger", None),
    "wandb": ("WandbLogger", None),
}


def test_every_logger_has_an_expectation_and_csv_comes_first_and_always():
    assert set(LOGGER_TYPES) == set(LOGGERS)
    assert [name for name, kind in LOGGERS.items() if kind.always] == ["csv"] == list(LOGGERS)[:1]
    switches = {f.name for f in fields(LoggerSchema)} - {"experiment", "mlflow_uri"}
    assert switches == {name for name, kind in LOGGERS.items() if not kind.always}  # logger.<name>: true | false


@pytest.mark.parametrize("name", list(LOGGERS))
def test_each_logger_builds_its_lightning_logger_in_the_run_directory(name, tmp_path):
    kind = LOGGERS.get(name)
    assert (kind.package is None) == kind.always  # every optional logger names the package it needs
    if kind.package and importlib.util.find_spec(kind.package) is None:
        pytest.skip(f"{kind.package} is not installed")
    logger = kind.build(LogContext(tmp_path, "probe", "probe", OmegaConf.structured(LoggerSchema(experiment="digits"))))
    cls, folder = LOGGER_TYPES[name]
    assert cls in {c.__name__ for c in type(logger).__mro__}  # Lightning's logger (or finetune's subclass of it)
    if folder is not None:
        assert Path(logger.log_dir) == tmp_path / folder


# --- export formats ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_names_its_file_a_writer_and_a_loader(name):
    spec = FORMATS.get(name)
    assert spec.filename and spec.tolerance > 0 and spec.summary
    inspect.signature(spec.write).bind("bundle", Path("out"))
    loaders = {tuple(inspect.signature(f.load).parameters) for f in FORMATS.values()}
    assert callable(spec.load) and len(loaders) == 1  # every loader is called the same way
    inspect.signature(spec.check).bind("bundle")
