"""The config's schema: every key finetune reads, declared once with its type and the value a config
written before the key existed takes (Hydra structured configs).

Importing this module registers the schema in Hydra's ConfigStore, so every composition checks the YAML
groups against it: ``conf/config.yaml`` starts from ``schema_finetune``; each ``conf/task/<name>.yaml``
names its task's schema (``schema_task_<name>``: the shared keys plus the task's own, at their usual
paths); each ``conf/dataset/<kind>.yaml`` and ``conf/head/<kind>.yaml`` names the schema of its kind
(``schema_dataset_<kind>``, ``schema_head_<kind>``). Unknown keys are refused and values are converted
to (or refused as not being) the declared type. A key that takes a number or a word is declared ``Any``
and has its own value check (``finetune.training.validate``, the task's ``validate``). Closed
vocabularies are plain strings checked by ``choice``/the registries, so saved configs and JSON hold
plain strings. A saved run's config is merged onto these classes when it is read back
(``finetune.run.config.typed_config``): keys added later take the defaults below, the values an older
finetune used when the key was absent.

Only dataclasses, typing, omegaconf and hydra here: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING

# --- dataset kinds (the dataclasses of finetune.data read the same keys) --------------------------------


@dataclass
class DatasetSchema:
    """Keys every classification dataset kind reads."""

    kind: str = MISSING
    image_size: int | None = None  # the model's input side; null: the backbone's pretrained size
    grayscale: str = "replicate"  # replicate | adapt
    allow_flips: bool = True
    num_workers: int = 2


@dataclass
class SplitDatasetSchema(DatasetSchema):
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0


@dataclass
class DigitsSchema(SplitDatasetSchema):
    """``dataset=digits``."""


@dataclass
class FolderSchema(SplitDatasetSchema):
    """``dataset=imagefolder``."""

    root: str | None = None
    on_error: str = "raise"  # raise | skip
    allow_outside_root: bool = False


@dataclass
class CsvSchema(FolderSchema):
    """``dataset=csv``."""

    csv: str | None = None
    multilabel: bool = False
    on_duplicate: str = "error"  # error | first


@dataclass
class DicomFolderSchema(FolderSchema):
    """``dataset=dicom_folder``."""

    window: list[float] | None = None  # [center, width]


@dataclass
class StreamingSchema(DatasetSchema):
    """``dataset=streaming`` (a pack of ``finetune pack``)."""

    uri: str | None = None
    cache_dir: str | None = None
    max_cache_size: str = "10GB"
    # a segmentation pack (task=segmentation): as for dataset=seg_folder|drive
    crop_size: int = 256
    tile_overlap: float = 0.5
    scale: float = 1.0
    samples_per_image: int = 1


@dataclass
class MedmnistSchema(DatasetSchema):
    """``dataset=medmnist``."""

    name: str | None = None
    size: int = 28
    file: str | None = None
    download: bool = True
    root: str | None = None


@dataclass
class SegFolderSchema:
    """``dataset=seg_folder`` and ``dataset=drive`` (task=segmentation)."""

    kind: str = MISSING
    root: str | None = None
    class_names: list[str] | None = None
    mask_mode: str = "index"  # index | binary | palette
    palette: list[list[int]] | None = None
    ignore_index: int = 255
    images_dir: str = "images"
    masks_dir: str = "masks"
    mask_suffix: str = ""
    splits: dict[str, str] | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    split_seed: int = 0
    crop_size: int = 256
    tile_overlap: float = 0.5
    scale: float = 1.0
    samples_per_image: int = 1
    grayscale: str = "replicate"
    num_workers: int = 2


# --- head kinds: every key but kind goes to the head's or decoder's builder ----------------------------


@dataclass
class LinearHeadSchema:
    kind: str = MISSING
    dropout: float = 0.0


@dataclass
class MlpHeadSchema:
    kind: str = MISSING
    hidden: list[int] = field(default_factory=lambda: [512])
    dropout: float = 0.2
    activation: str = "gelu"


# A decoder's keys are smp's arguments of that architecture (segmentation_models_pytorch 0.6); null: smp's
# default (the key is not passed). Words of closed vocabularies: DECODER_WORDS. Not declared: smp's
# ``upsampling`` (the logits must come out at the input size) and ``encoder_depth`` (the backbone's stages).


@dataclass
class UnetHeadSchema:
    kind: str = MISSING
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    decoder_attention_type: str | None = None  # scse: channel + spatial attention in every block
    decoder_use_norm: str | None = None  # batchnorm (smp's default) | identity: no normalization
    decoder_interpolation: str | None = None  # upsampling mode: nearest (smp's default) | bilinear | …


@dataclass
class FpnHeadSchema:
    kind: str = MISSING
    decoder_pyramid_channels: int = 256
    decoder_segmentation_channels: int = 128
    decoder_dropout: float = 0.2
    decoder_merge_policy: str | None = None  # add (smp's default) | cat
    decoder_interpolation: str | None = None


@dataclass
class DeepLabV3PlusHeadSchema:
    kind: str = MISSING
    decoder_channels: int = 256
    encoder_output_stride: int = 16
    decoder_atrous_rates: list[int] | None = None  # the ASPP dilations (smp's default [12, 24, 36])
    decoder_aspp_separable: bool | None = None  # depthwise-separable ASPP convolutions (smp's default true)
    decoder_aspp_dropout: float | None = None  # (smp's default 0.5)


# head.<key> -> the words smp takes for it (a decoder option; null: smp's default). Checked with the config.
DECODER_WORDS: dict[str, tuple[str, ...]] = {
    "decoder_attention_type": ("scse",),
    # smp 0.6's Unet also names layernorm / instancenorm (they fail on its feature maps) and inplace (inplace_abn)
    "decoder_use_norm": ("batchnorm", "identity"),
    "decoder_interpolation": ("nearest", "nearest-exact", "bilinear", "bicubic", "area"),
    "decoder_merge_policy": ("add", "cat"),
}


# --- the groups with one shape ---------------------------------------------------------------------------


@dataclass
class PreprocessingSchema:
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str | None = None


@dataclass
class BackboneSchema:
    name: str = MISSING
    pretrained: bool = True
    weights: str | None = None
    freeze: Any = 0  # int (stages; negative: from the top) or "all"; checked against the backbone's stages
    bn: str = "frozen"  # frozen | train
    adapter: str = "none"
    adapter_rank: int = 8
    adapter_alpha: float = 16.0
    adapter_targets: list[str] | None = None
    drop_path_rate: float = 0.0
    preprocessing: PreprocessingSchema = field(default_factory=PreprocessingSchema)


@dataclass
class PhaseSchema:
    """One entry of ``schedule.phases``: a key left out reads the schedule's (or ``backbone.freeze``)."""

    name: str | None = None  # null: phase<i+1>
    epochs: int = MISSING
    freeze: Any = II("backbone.freeze")
    optimizer: str = II("schedule.optimizer")
    lr: float = II("schedule.lr")
    backbone_lr_mult: float = II("schedule.backbone_lr_mult")
    layer_decay: float | None = II("schedule.layer_decay")
    weight_decay: float = II("schedule.weight_decay")
    momentum: float = II("schedule.momentum")
    scheduler: str = II("schedule.scheduler")
    warmup_epochs: float = II("schedule.warmup_epochs")


@dataclass
class EarlyStopSchema:
    patience: int | None = None
    min_delta: float = 0.0


@dataclass
class ScheduleSchema:
    optimizer: str = "adamw"
    lr: float = MISSING
    backbone_lr_mult: float = 0.1
    layer_decay: float | None = None
    weight_decay: float = 0.01
    momentum: float = 0.9
    scheduler: str = "warmup_cosine"
    warmup_epochs: float = 0.0
    batch_size: int = 32
    epochs: int = MISSING
    early_stop: EarlyStopSchema = field(default_factory=EarlyStopSchema)
    phases: list[PhaseSchema] = field(default_factory=list)


@dataclass
class AugmentSchema:
    hflip: float = 0.0
    vflip: float = 0.0
    crop_scale: list[float] | None = None
    rotate: float = 0.0
    shift: float = 0.0
    zoom: float = 0.0
    color_jitter: float = 0.0
    hue: float = 0.0
    dropout: float = 0.0
    dropout_holes: list[int] = field(default_factory=lambda: [1, 4])
    dropout_size: list[float] = field(default_factory=lambda: [0.05, 0.15])
    clahe: float = 0.0
    clahe_clip: float = 2.0


@dataclass
class TrainerSchema:
    """The Lightning Trainer arguments finetune passes on (the others: ``LIGHTNING_ELSEWHERE``), and finetune's own
    keys for how the model trains on the device (``channels_last``, ``compile``): not Trainer arguments."""

    accelerator: str = "auto"
    devices: Any = 1  # a count, a list of device indices, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    sync_batchnorm: bool = False
    precision: str = "32-true"
    deterministic: Any = False  # true, false or "warn"
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    limit_train_batches: Any = None  # a count of batches (int), a fraction (float) or null: all
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    log_every_n_steps: int = 10
    progress_bar: bool = True
    # finetune's own keys, applied to the model while it trains (never passed to Lightning's Trainer; docs/gpu.md):
    channels_last: bool = False  # model and batches in channels-last (NHWC) memory format: faster convolutions on GPUs
    compile: bool = False  # torch.compile the model's training forward (checkpoints and exports keep the plain model)
    compile_backend: str = "inductor"  # torch.compile's backend (torch._dynamo.list_backends()), e.g. aot_eager
    debug: bool = False  # trainer=debug: each phase runs 1 epoch; the run says its metrics are not meaningful


@dataclass
class LoggerSchema:
    tensorboard: bool = True
    mlflow: bool = False
    wandb: bool = False
    experiment: str = "finetune"
    # MLflow's store: null = MLFLOW_TRACKING_URI if set, else sqlite:///<runs folder>/mlflow.db (docs/tracking.md);
    # checked before a run (a scheme MLflow knows, no password: the config is recorded)
    mlflow_uri: str | None = None


@dataclass
class CheckpointsSchema:
    # best | last | both | none: which checkpoint the run tests and keeps; none writes no checkpoint and tests and
    # exports the best epoch's weights held in memory (a search's trials: the disk keeps their exports; resume
    # starts an interrupted run again; a finished run cannot be resumed)
    keep: str = "best"


@dataclass
class DataSchema:
    cache_features: Any = "auto"  # auto | true | false


@dataclass
class EmaSchema:
    decay: float | None = None
    warmup: bool = True


@dataclass
class SearchSchema:
    """``search``: which trial of which study a run is; set by the search sweeper (``hydra/sweeper=search``) for
    each trial it launches, null outside a search."""

    storage: str | None = None  # the study's storage: journal:<path>, sqlite:///…, postgresql://…
    study: str | None = None  # the study's name
    trial: int | None = None  # the trial's number in the study (= the job's number in the sweep directory)


@dataclass
class FinetuneSchema:
    """The keys every task reads. ``dataset`` and ``head`` take the schema of their kind."""

    task: str = MISSING
    dataset: Any = MISSING
    backbone: BackboneSchema = field(default_factory=BackboneSchema)
    head: Any = MISSING
    schedule: ScheduleSchema = field(default_factory=ScheduleSchema)
    augment: AugmentSchema = field(default_factory=AugmentSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    logger: LoggerSchema = field(default_factory=LoggerSchema)
    seed: int = 0
    plan: bool = False
    resume: str | None = None
    resume_finished: bool = False
    monitor: str = "auto"
    checkpoints: CheckpointsSchema = field(default_factory=CheckpointsSchema)
    data: DataSchema = field(default_factory=DataSchema)
    ema: EmaSchema = field(default_factory=EmaSchema)
    search: SearchSchema = field(default_factory=SearchSchema)


# --- the tasks: the shared keys plus each task's own --------------------------------------------------


@dataclass
class LossSchema:
    label_smoothing: float = 0.0


@dataclass
class MixSchema:
    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0


@dataclass
class ClassificationSchema(FinetuneSchema):
    """``task=classification``."""

    threshold: Any = 0.5  # a probability in (0, 1) or "tune"
    # threshold=tune needs this many val images of each class (each label's), else 0.5 is kept: with fewer the
    # balanced-accuracy optimum follows single images (BreastMNIST's 21 malignant ones cost 9.6 points of test ACC)
    threshold_tune_min: int = 50
    calibration: str = "none"  # none | temperature
    tta: bool = False
    imbalance: str = "none"  # none | weighted_loss | sampler | auto
    init_from: str | None = None
    loss: LossSchema = field(default_factory=LossSchema)
    mix: MixSchema = field(default_factory=MixSchema)


@dataclass
class SegmentationOptionsSchema:
    loss: str = "ce_dice"  # ce | dice | ce_dice | focal
    class_weights: bool = False
    overlays: int = 4


@dataclass
class SegmentationSchema(FinetuneSchema):
    """``task=segmentation``."""

    segmentation: SegmentationOptionsSchema = field(default_factory=SegmentationOptionsSchema)


# What a task does instead of a key of another task, said when the key is refused: task -> {the key, or its
# group: why it has none / which key of its own does it}.
INSTEAD: dict[str, dict[str, str]] = {
    "segmentation": {
        "imbalance": "for segmentation use segmentation.class_weights=true: class weights from pixel frequencies",
        "threshold": (
            "segmentation gives each pixel the argmax class and picks the checkpoint by monitor=dice|miou; "
            "segmentation.class_weights=true favours rare classes"
        ),
        "init_from": "a decoder has no per-class rows to copy by name: segmentation starts from the pretrained encoder",
        "loss": "segmentation's losses take hard labels: choose one with segmentation.loss=ce|dice|ce_dice|focal",
        "mix": "mixup and cutmix blend whole images that carry one label each, not masks",
        "calibration": "temperature scaling is fitted to one prediction per image, not per pixel",
        "tta": "flip averaging is implemented for one prediction per image, not for masks",
    },
    "classification": {
        "segmentation.class_weights": (
            "for classification use imbalance=weighted_loss: class weights from the label counts"
        ),
    },
}


# Lightning Trainer arguments finetune sets from keys of its own: trainer.<argument> -> (what sets it, the
# key to use; "{value}" is the value typed). The arguments it passes on are TrainerSchema's keys.
LIGHTNING_ELSEWHERE: dict[str, tuple[str, str]] = {
    "max_epochs": ("each phase runs its epochs", "schedule.epochs={value} (or a phase's schedule.phases.<i>.epochs)"),
    "min_epochs": ("each phase runs its epochs", "schedule.epochs={value} (or a phase's schedule.phases.<i>.epochs)"),
    "max_steps": ("phases are counted in epochs", "schedule.epochs, with trainer.limit_train_batches for shorter ones"),
    "min_steps": ("phases are counted in epochs", "schedule.epochs, with trainer.limit_train_batches for shorter ones"),
    "max_time": ("phases are counted in epochs", "schedule.epochs, or schedule.early_stop.patience"),
    "fast_dev_run": (
        "a smoke run goes through the whole run",
        "trainer=debug (2 batches of every phase, validation and test, then the exports)",
    ),
    "overfit_batches": ("the training batches are limited", "trainer.limit_train_batches={value}"),
    "enable_checkpointing": (
        "every epoch is checkpointed: resume needs it",
        "checkpoints.keep=best|last|both to choose what a finished run keeps",
    ),
    "logger": ("the loggers are a config group", "logger=csv|tensorboard|mlflow|wandb|many"),
    "enable_progress_bar": ("the progress bar is finetune's", "trainer.progress_bar={value}"),
    "default_root_dir": ("the run directory is Hydra's", "hydra.run.dir={value}"),
    "gradient_clip_algorithm": (
        "clipping is always by the global L2 norm",
        "trainer.gradient_clip_val=<largest norm>",
    ),
    "callbacks": ("finetune installs its own callbacks", "the keys of the config (finetune train --cfg job)"),
    "enable_model_summary": ("finetune prints its own summary", "finetune summary backbone=…"),
    "num_sanity_val_steps": ("validation runs after each training epoch only", "trainer.limit_val_batches"),
    "check_val_every_n_epoch": ("every epoch is validated and checkpointed", "trainer.limit_val_batches"),
    "val_check_interval": ("every epoch is validated and checkpointed", "trainer.limit_val_batches"),
    "use_distributed_sampler": ("finetune shards the data itself", "trainer=ddp trainer.devices=<n>"),
    "limit_predict_batches": ("predict is its own command", "finetune predict export=… inputs=…"),
    "plugins": ("finetune installs its own plugins", "trainer.precision / trainer.sync_batchnorm"),
}

# Top-level groups whose schema depends on their ``kind``: group -> kind -> schema.
KINDS: dict[str, dict[str, type]] = {
    "dataset": {
        "digits": DigitsSchema,
        "imagefolder": FolderSchema,
        "csv": CsvSchema,
        "medmnist": MedmnistSchema,
        "dicom_folder": DicomFolderSchema,
        "seg_folder": SegFolderSchema,
        "drive": SegFolderSchema,
        "streaming": StreamingSchema,
    },
    "head": {
        "linear": LinearHeadSchema,
        "mlp": MlpHeadSchema,
        "unet": UnetHeadSchema,
        "fpn": FpnHeadSchema,
        "deeplabv3plus": DeepLabV3PlusHeadSchema,
    },
}
# task name -> its schema (a subclass of FinetuneSchema); register_task_schema adds one.
TASKS: dict[str, type[FinetuneSchema]] = {}


def register_task_schema(name: str, schema: type[FinetuneSchema]) -> None:
    """Make ``task=<name>`` composable: ``conf/task/<name>.yaml`` names ``/schema_task_<name>@_here_``
    in its defaults; a saved config with ``task: <name>`` is read back onto ``schema``."""
    TASKS[name] = schema
    ConfigStore.instance().store(name=f"schema_task_{name}", node=schema)


def register_kind(group: str, kind: str, schema: type) -> None:
    """Make ``<group>=<kind>`` composable: ``conf/<group>/<kind>.yaml`` names ``/schema_<group>_<kind>@_here_``."""
    KINDS.setdefault(group, {})[kind] = schema
    ConfigStore.instance().store(name=f"schema_{group}_{kind}", node=schema)


def _register() -> None:
    ConfigStore.instance().store(name="schema_finetune", node=FinetuneSchema)
    for group, kinds in KINDS.items():
        for kind, schema in kinds.items():
            register_kind(group, kind, schema)
    register_task_schema("classification", ClassificationSchema)
    register_task_schema("segmentation", SegmentationSchema)


_register()
