"""Medical imaging: MedMNIST npz, task types, benchmark metrics, imbalance, thresholds, DICOM, recipes.

Real files: ../shared/data/medmnist (read in place) and pydicom's bundled test files (copied into
class folders in tmp_path). Fast cases use tiny synthetic npz files written to tmp_path.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score

from finetune.commands.precheck import check_config
from finetune.data.datamodule import ClassificationDataModule
from finetune.data.imbalance import loss_weights, resolve_imbalance
from finetune.data.medmnist import MEDMNIST, official_file_name
from finetune.data.samplers import ClassBalancedSampler
from finetune.data.transforms import Augment, Preprocessing, augment_ops
from finetune.run.errors import ConfigError, DatasetError
from finetune.tasks.classification.module import (
    ClassificationTask,
    balanced_accuracy_threshold,
    classification_metrics,
    monitor_metric,
    probabilities,
    tune_thresholds,
)

from ..conftest import REPO, compose_config
from ..helpers import group_option

NONE_AUGMENT = {}  # the Augment defaults: no random op
RECIPES = ("pneumonia", "breast", "blood", "derma")


def medmnist_cfg(**overrides):
    """conf/dataset/medmnist.yaml in struct mode (unknown keys fail, as under Hydra) with overrides."""
    cfg = group_option("dataset", "medmnist")
    OmegaConf.set_struct(cfg, True)
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def make_dm(dataset, imbalance: str = "none", batch_size: int = 8) -> ClassificationDataModule:
    return ClassificationDataModule(dataset, NONE_AUGMENT, batch_size, num_workers=0, seed=0, imbalance=imbalance)


def write_npz(
    path: Path,
    sizes=(12, 4, 6),
    num_classes: int = 2,
    label_shape: str = "n1",
    channels: int = 1,
    multilabel: int = 0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A MedMNIST-layout npz: {split}_images uint8 (N, 28, 28[, 3]) and {split}_labels."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        shape = (n, 28, 28) if channels == 1 else (n, 28, 28, 3)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        if multilabel:
            labels = rng.integers(0, 2, (n, multilabel)).astype(np.uint8)
            labels[0], labels[1] = 1, 0  # every label has a positive and a negative
        else:
            labels = (np.arange(n) % num_classes).astype(np.uint8)
            labels = labels[:, None] if label_shape == "n1" else labels
        arrays[f"{split}_labels"] = labels
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def tiny_model(num_classes: int, in_chans: int = 1):
    import timm

    from finetune.models.backbones import build_stage_map
    from finetune.models.freezing import FineTuneModel

    backbone = timm.create_model("resnet10t", pretrained=False, num_classes=0, in_chans=in_chans)
    return FineTuneModel(backbone, torch.nn.Linear(backbone.num_features, num_classes), build_stage_map(backbone))


# --- MedMNIST npz -----------------------------------------------------------------------------


def test_real_npz_with_n1_and_n_labels_keeps_official_splits(shared_data):
    root = str(shared_data / "medmnist")
    blood = make_dm(medmnist_cfg(name="bloodmnist", root=root))  # labels stored (N, 1)
    breast = make_dm(medmnist_cfg(name="breastmnist", root=root))  # labels stored (N,)
    assert blood.split_sizes == {"train": 11959, "val": 1712, "test": 3421}
    assert breast.split_sizes == {"train": 546, "val": 78, "test": 156}
    for dm in (blood, breast):
        assert all(s.targets.ndim == 1 and s.targets.dtype == np.int64 for s in dm.splits.values())
    assert blood.info.class_counts == [852, 2181, 1085, 2026, 849, 993, 2330, 1643]
    assert breast.info.class_counts == [147, 399]
    assert blood.info.task == "multi-class" and blood.info.image_channels == 3 and blood.in_chans == 3
    assert breast.info.task == "binary" and breast.info.class_names == ["malignant", "normal, benign"]
    assert breast.info.image_channels == 1 and breast.in_chans == 1  # grayscale=adapt is the default
    with np.load(shared_data / "medmnist" / "breastmnist.npz") as npz:
        assert np.array_equal(breast.splits["test"].images[..., 0], npz["test_images"])  # order kept


def test_explicit_file_names_the_subset(shared_data):
    dm = make_dm(medmnist_cfg(root=str(shared_data / "medmnist"), file="pneumoniamnist_reduced_train.npz"))
    assert dm.info.class_names == ["normal", "pneumonia"] and dm.info.task == "binary"
    assert dm.split_sizes == {"train": 3882, "val": 524, "test": 624}
    assert dm.info.class_counts == [388, 3494]


@pytest.mark.parametrize("size", [28, 64])
def test_synthetic_npz_label_shapes_and_sizes(tmp_path, size):
    flat = write_npz(tmp_path / official_file_name("breastmnist", size), label_shape="n")
    dm = make_dm(medmnist_cfg(name="breastmnist", root=str(tmp_path), size=size))
    assert np.array_equal(dm.splits["train"].targets, flat["train_labels"].astype(np.int64))
    write_npz(tmp_path / official_file_name("breastmnist", size), label_shape="n1")
    column = make_dm(medmnist_cfg(name="breastmnist", root=str(tmp_path), size=size))
    assert np.array_equal(column.splits["train"].targets, dm.splits["train"].targets)
    assert official_file_name("breastmnist", size) == ("breastmnist.npz" if size == 28 else "breastmnist_64.npz")


def test_missing_file_without_medmnist_names_path_and_how(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "medmnist", None)  # import medmnist → ImportError
    with pytest.raises(DatasetError) as err:
        make_dm(medmnist_cfg(name="pneumoniamnist", root=str(tmp_path), size=64))
    message = str(err.value)
    assert str(tmp_path / "pneumoniamnist_64.npz") in message and "pip install medmnist" in message
    with pytest.raises(DatasetError, match="dataset.download=false"):
        make_dm(medmnist_cfg(name="pneumoniamnist", root=str(tmp_path), download=False))


def test_missing_file_is_downloaded_with_the_medmnist_package(tmp_path, monkeypatch):
    calls = []

    class FakePneumoniaMNIST:  # what medmnist.PneumoniaMNIST(split, download, size, root) does: write the npz
        def __init__(self, split, download, size, root):
            calls.append((split, download, size, root))
            write_npz(Path(root) / official_file_name("pneumoniamnist", size))

    monkeypatch.setitem(sys.modules, "medmnist", types.SimpleNamespace(PneumoniaMNIST=FakePneumoniaMNIST))
    dm = make_dm(medmnist_cfg(name="pneumoniamnist", root=str(tmp_path / "cache"), size=128))
    assert calls == [("train", True, 128, str(tmp_path / "cache"))]
    assert dm.split_sizes == {"train": 12, "val": 4, "test": 6}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"name": "organmnist3d"}, "3D subsets are not supported"),
        ({"name": "pneumonia"}, "not a MedMNIST 2D subset"),
        ({"name": "breastmnist", "size": 32}, "sizes"),
        ({"name": None}, "dataset.name is not set"),
    ],
)
def test_bad_medmnist_config_is_named(tmp_path, overrides, message):
    with pytest.raises(DatasetError, match=message):
        make_dm(medmnist_cfg(root=str(tmp_path), **overrides))


def test_labels_outside_the_classes_are_refused(tmp_path):
    write_npz(tmp_path / "breastmnist.npz", num_classes=3)
    with pytest.raises(DatasetError, match="outside 0..1"):
        make_dm(medmnist_cfg(name="breastmnist", root=str(tmp_path)))


# --- task types: loss, head activation, metrics ----------------------------------------------


def test_multilabel_subset_takes_the_bce_path(tmp_path):
    write_npz(tmp_path / "chestmnist.npz", sizes=(16, 8, 8), multilabel=14)
    dm = make_dm(medmnist_cfg(name="chestmnist", root=str(tmp_path)), imbalance="weighted_loss")
    assert dm.info.task == "multi-label" and dm.info.multilabel and dm.info.num_classes == 14
    assert dm.splits["train"].targets.shape == (16, 14) and dm.splits["train"].targets.dtype == np.float32
    counts = np.asarray(dm.info.class_counts, dtype=np.float32)
    assert torch.allclose(dm.class_weights, torch.as_tensor((16 - counts) / counts))  # BCE pos_weight
    dm.set_preprocessing(Preprocessing((32, 32), (0.5,), (0.25,), "bilinear", 1))
    task = ClassificationTask(tiny_model(14), 14, multilabel=True, class_weights=dm.class_weights, task=dm.info.task)
    assert isinstance(task.loss_fn, torch.nn.BCEWithLogitsLoss)
    assert torch.equal(task.loss_fn.pos_weight, dm.class_weights)
    batch = next(iter(dm.val_dataloader()))
    loss, logits, targets = task._step(batch)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch[1], pos_weight=dm.class_weights)
    assert torch.allclose(loss, expected)
    task.val_metrics.update(logits, targets)
    assert {"val/auc", "val/acc", "val/balanced_acc"} <= set(task.val_metrics.compute())
    assert "loss_fn.pos_weight" not in task.state_dict()  # a task built without weights loads the checkpoint


@pytest.mark.parametrize(
    "task, num_classes, loss",
    [
        ("binary", 2, torch.nn.CrossEntropyLoss),
        ("multi-class", 8, torch.nn.CrossEntropyLoss),
        ("ordinal-regression", 5, torch.nn.CrossEntropyLoss),
        ("multi-label", 14, torch.nn.BCEWithLogitsLoss),
    ],
)
def test_task_type_sets_loss_and_metrics(task, num_classes, loss):
    module = ClassificationTask(tiny_model(num_classes), num_classes, multilabel=task == "multi-label", task=task)
    assert isinstance(module.loss_fn, loss)
    assert module.task == task
    test_names = set(module.test_metrics.decisions) | set(module.test_metrics.scores)
    assert {"acc", "balanced_acc", "auc", "recall", "confusion"} <= test_names
    assert "auc" in module.val_metrics.scores and module.train_metrics.scores is None


def test_weighted_cross_entropy_uses_the_class_weights():
    weights = loss_weights([30, 10])
    module = ClassificationTask(tiny_model(2), 2, class_weights=weights)
    logits, targets = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 1, 1])
    assert torch.allclose(
        module.loss_fn(logits, targets), torch.nn.functional.cross_entropy(logits, targets, weight=weights)
    )
    assert "loss_fn.weight" not in module.state_dict()


def fixed_logits(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_auc_matches_sklearn_for_each_task():
    y = torch.tensor([0, 1, 1, 0, 1, 0, 1, 1, 0, 1])
    binary = fixed_logits((10, 2))
    metrics = classification_metrics(2, False, full=True)
    metrics.update(binary[:4], y[:4])
    metrics.update(binary[4:], y[4:])  # accumulated over batches
    assert float(metrics.compute()["auc"]) == pytest.approx(roc_auc_score(y, binary.softmax(1)[:, 1]), abs=1e-6)

    y3 = torch.tensor([0, 1, 2, 2, 1, 0, 2, 1, 0, 2, 1, 0])
    multi = fixed_logits((12, 3), seed=1) * 0.3  # logits inside [0, 1] must still go through softmax
    metrics = classification_metrics(3, False, full=True)
    metrics.update(multi, y3)
    expected = roc_auc_score(y3, multi.softmax(1), multi_class="ovr", average="macro")
    assert float(metrics.compute()["auc"]) == pytest.approx(expected, abs=1e-6)

    ym = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]])
    labels = fixed_logits((6, 3), seed=2)
    metrics = classification_metrics(3, True, full=True)
    metrics.update(labels, ym)
    expected = np.mean([roc_auc_score(ym[:, k], labels.sigmoid()[:, k]) for k in range(3)])
    assert float(metrics.compute()["auc"]) == pytest.approx(expected, abs=1e-6)


def test_balanced_accuracy_recall_and_confusion_match_sklearn():
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 1])
    logits = fixed_logits((12, 3), seed=3)
    metrics = classification_metrics(3, False, full=True)
    metrics.update(logits, y)
    result = metrics.compute()
    predicted = logits.argmax(1)
    assert float(result["balanced_acc"]) == pytest.approx(balanced_accuracy_score(y, predicted), abs=1e-6)
    assert np.allclose(result["recall"].numpy(), recall_score(y, predicted, average=None), atol=1e-6)
    assert int(result["confusion"].sum()) == 12 and result["confusion"].shape == (3, 3)


# --- imbalance -------------------------------------------------------------------------------


def test_loss_weights_and_auto_choice_from_counts():
    weights = loss_weights([388, 3494])
    assert torch.allclose(weights, torch.tensor([3882 / (2 * 388), 3882 / (2 * 3494)]))
    assert float((weights * torch.tensor([388.0, 3494.0])).sum()) == pytest.approx(3882, rel=1e-6)  # mean 1
    assert torch.allclose(loss_weights([2, 6], multilabel=True, num_samples=8), torch.tensor([3.0, 1 / 3]))
    assert resolve_imbalance("auto", [388, 3494]) == "weighted_loss"  # 9:1
    assert resolve_imbalance("auto", [147, 399]) == "none"  # 2.7:1
    assert resolve_imbalance("sampler", [1, 9]) == "sampler"
    with pytest.raises(DatasetError, match="weighted_loss"):
        resolve_imbalance("sampler", [1, 9], multilabel=True)
    with pytest.raises(DatasetError, match="imbalance="):
        resolve_imbalance("oversample", [1, 9])


def test_sampler_two_ranks_draw_disjoint_shards_with_balanced_ratios():
    labels = np.array([0] * 40 + [1] * 360)  # 1:9
    ranks = [ClassBalancedSampler(labels, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for epoch in (0, 1):
        draws = []
        for sampler in ranks:
            sampler.set_epoch(epoch)
            draws.append(list(sampler))
        assert [len(d) for d in draws] == [200, 200] == [len(s) for s in ranks]  # ranks stay in step
        assert not set(draws[0]) & set(draws[1])  # disjoint shards
        for d in draws:
            assert np.bincount(labels[d]).tolist() == [100, 100]  # the target ratio 1:1 on every rank
            minority = [i for i in d if labels[i] == 0]
            assert len(set(minority)) == 20  # rank's 20 minority images, each seen 5 times
    ranks[0].set_epoch(1)
    again = ClassBalancedSampler(labels, seed=3, num_replicas=2, rank=0)
    again.set_epoch(1)
    assert list(again) == list(ranks[0])  # (seed, epoch) fixes the order: resumable
    again.set_epoch(2)
    assert list(again) != list(ranks[0])
    weighted = ClassBalancedSampler(labels, num_replicas=2, rank=1, ratios=[1, 3])
    assert np.bincount(labels[list(weighted)]).tolist() == [50, 150]


def test_datamodule_sampler_follows_imbalance(shared_data):
    dm = make_dm(
        medmnist_cfg(root=str(shared_data / "medmnist"), file="pneumoniamnist_reduced_train.npz"),
        imbalance="sampler",
        batch_size=64,
    )
    assert dm.imbalance == "sampler" and dm.class_weights is None
    sampler = dm.train_sampler(rank=1, world_size=2)
    assert isinstance(sampler, ClassBalancedSampler) and len(sampler) == 1941
    assert np.bincount(dm.splits["train"].targets[list(sampler)]).tolist() == [971, 970]
    dm.set_preprocessing(Preprocessing((28, 28), (0.5,), (0.25,), "bilinear", 1))
    _, targets = next(iter(dm.train_dataloader()))
    assert 16 < int((targets == 0).sum()) < 48  # balanced batches from a 1:9 split
    auto = make_dm(
        medmnist_cfg(root=str(shared_data / "medmnist"), file="pneumoniamnist_reduced_train.npz"), imbalance="auto"
    )
    assert auto.imbalance == "weighted_loss" and auto.class_weights[0] > auto.class_weights[1]


def test_cached_feature_phases_draw_with_the_balanced_sampler(tmp_path):
    from finetune.training.features import FeatureDataModule

    write_npz(tmp_path / "breastmnist.npz", sizes=(12, 4, 4))
    dm = make_dm(medmnist_cfg(name="breastmnist", root=str(tmp_path)), imbalance="sampler", batch_size=4)
    dm.set_preprocessing(Preprocessing((32, 32), (0.5,), (0.25,), "bilinear", 1))
    features = FeatureDataModule.extract(tiny_model(2).eval(), dm, torch.device("cpu"))
    assert isinstance(
        features.train_dataloader().batch_sampler.sampler, ClassBalancedSampler
    )  # imbalance=sampler holds here too


# --- decision threshold ----------------------------------------------------------------------


def test_threshold_maximises_balanced_accuracy():
    scores = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    assert balanced_accuracy_threshold(scores, labels) == pytest.approx(0.25)
    assert balanced_accuracy_threshold(scores, np.ones(10)) == 0.5  # cannot tune without both classes


def test_threshold_tuned_on_val_is_applied_to_test():
    # val: positives score >= 0.2; test: same model, so the tuned threshold carries over
    val_p1 = torch.tensor([0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.6, 0.8])
    val_y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    threshold = tune_thresholds(torch.stack([1 - val_p1, val_p1], 1), val_y, "binary", min_per_class=4)
    assert 0.15 < threshold <= 0.2
    test_p1 = torch.tensor([0.01, 0.12, 0.16, 0.22, 0.35, 0.45, 0.7, 0.9])
    test_y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    logits = torch.stack([torch.zeros(8), torch.log(test_p1 / (1 - test_p1))], 1)  # softmax → test_p1
    default, tuned = classification_metrics(2, False, full=True), classification_metrics(2, False, full=True)
    default.update(logits, test_y)
    tuned.update(logits, test_y, threshold)
    assert float(tuned.compute()["balanced_acc"]) == 1.0
    assert float(default.compute()["balanced_acc"]) < 1.0  # 0.5 misses the positives at 0.22..0.45
    assert float(tuned.compute()["auc"]) == float(default.compute()["auc"])  # AUC needs no threshold


def test_a_threshold_is_tuned_only_on_enough_images_of_each_class(caplog, monkeypatch):
    """With fewer than ``threshold_tune_min`` val images of a class (BreastMNIST has 21 malignant ones) the
    tuned threshold would follow single images: 0.5 is kept and one warning (rank zero only) says why; per
    label, multi-label."""
    rng = np.random.default_rng(0)
    least = 50
    for positives, tuned in ((least - 1, False), (least, True)):
        targets = torch.tensor([1] * positives + [0] * 200)
        p1 = torch.tensor(
            np.where(targets.numpy() == 1, rng.uniform(0.1, 0.3, len(targets)), rng.uniform(0, 0.1, len(targets)))
        )
        caplog.clear()
        threshold = tune_thresholds(torch.stack([1 - p1, p1], 1), targets, "binary", least)
        midpoint = (float(p1[targets == 0].max()) + float(p1[targets == 1].min())) / 2  # the classes are separable
        assert threshold == (pytest.approx(midpoint, abs=1e-12) if tuned else 0.5)
        assert ("kept the threshold at 0.5: 49 val image(s) of class 1, fewer than" in caplog.text) == (not tuned)
    few, many = least - 1, least
    labels = torch.tensor([[1, 1]] * few + [[0, 1]] * (many - few) + [[0, 0]] * 200)
    scores = torch.tensor(np.where(labels.numpy() == 1, 0.2, 0.05))  # float64: the midpoint is 0.125
    caplog.clear()
    assert tune_thresholds(scores, labels, "multi-label", least) == [0.5, pytest.approx(0.125, abs=1e-12)]
    assert len(caplog.records) == 1 and "of 1 label(s) at 0.5: 49 positive val image(s) of label 0," in caplog.text
    assert "label 1" not in caplog.text
    caplog.clear()
    monkeypatch.setattr("finetune.tasks.classification.module.rank_zero_only.rank", 1)
    assert tune_thresholds(scores, labels, "multi-label", least)[0] == 0.5 and not caplog.records  # rank 0 says it


def test_threshold_tune_min_is_a_count_of_at_least_one():
    assert check_config(compose_config("threshold=tune", "threshold_tune_min=1"))
    for value in (0, -3):
        with pytest.raises(ConfigError, match=f"threshold_tune_min={value}: .*an integer >= 1"):
            check_config(compose_config(f"threshold_tune_min={value}"))


def test_tune_threshold_reads_only_the_batches_it_is_given():
    module = ClassificationTask(tiny_model(2), 2)
    images = torch.randn(12, 1, 32, 32)
    targets = torch.tensor([0, 1] * 6)
    val = [(images[:6], targets[:6]), (images[6:], targets[6:])]
    module.fit_on_validation(val, temperature=False, threshold=True, min_per_class=6)  # 6 images of each class
    logits, _ = module.predict_logits(val)
    assert module.threshold == tune_thresholds(probabilities(logits, "binary"), targets, "binary")
    assert module.threshold_tuning == {"threshold_tuned": True}
    module.fit_on_validation(val, temperature=False, threshold=True, min_per_class=7)
    assert module.threshold == 0.5
    assert module.threshold_tuning == {"threshold_tuned": False, "threshold_kept_at_0.5": ["6 val image(s) of class 1"]}
    argmax = ClassificationTask(tiny_model(3), 3)
    argmax.fit_on_validation(val, temperature=False, threshold=True)
    assert argmax.threshold is None and argmax.threshold_tuning == {}  # argmax tasks: no threshold


# --- DICOM ------------------------------------------------------------------------------------


def dicom_tree(root: Path) -> Path:
    from pydicom.data import get_testdata_file

    for name, cls in (("CT_small.dcm", "ct"), ("MR_small.dcm", "mr")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            shutil.copy(get_testdata_file(name), root / cls / f"{i}.dcm")
    return root


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR), onto 0..255."""
    fraction = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    return np.round(fraction * 255)


def test_dicom_modality_and_voi_lut_give_8_bit_images(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    from finetune.data.dicom import read_dicom

    mr_path, ct_path = Path(get_testdata_file("MR_small.dcm")), Path(get_testdata_file("CT_small.dcm"))
    mr, ct = pydicom.dcmread(mr_path), pydicom.dcmread(ct_path)
    assert mr.pixel_array.dtype == np.int16 and mr.pixel_array.max() > 255  # 16-bit data
    image = read_dicom(mr_path)  # its own window (center 600, width 1600)
    assert image.dtype == np.uint8 and image.shape == (64, 64, 1) and image.std() > 10
    expected = linear_window(mr.pixel_array.astype(float), float(mr.WindowCenter), float(mr.WindowWidth))
    assert np.abs(image[..., 0].astype(int) - expected).max() <= 1

    hounsfield = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)  # modality LUT
    soft_tissue = read_dicom(ct_path, window=(40, 400))
    assert np.abs(soft_tissue[..., 0].astype(int) - linear_window(hounsfield, 40, 400)).max() <= 1
    assert soft_tissue.min() == 0 and soft_tissue.max() == 255  # air and bone clip at the window ends
    own = read_dicom(ct_path)  # no VOI in the file: its own HU range onto 0..255, order preserved
    assert own.min() == 0 and own.max() == 255
    order = np.argsort(ct.pixel_array.ravel(), kind="stable")
    assert (np.diff(own[..., 0].ravel()[order].astype(int)) >= 0).all()
    assert not np.array_equal(own[..., 0], ct.pixel_array.astype(np.uint8))  # not a wrapped 16→8 cast


def test_dicom_folder_loads_through_the_data_module(tmp_path):
    pytest.importorskip("pydicom")
    cfg = group_option("dataset", "dicom_folder")
    OmegaConf.set_struct(cfg, True)
    cfg.root = str(dicom_tree(tmp_path / "dicom"))
    dm = make_dm(cfg, batch_size=4)
    assert dm.info.class_names == ["ct", "mr"] and dm.info.image_channels == 1 and dm.in_chans == 1
    assert sum(dm.split_sizes.values()) == 8
    dm.set_preprocessing(Preprocessing((32, 32), (0.5,), (0.25,), "bilinear", 1))
    images, _ = next(iter(dm.eval_dataloader("train")))
    assert images.shape[1:] == (1, 32, 32) and float(images.std()) > 0.1
    cfg.window = [40, 400]
    windowed = make_dm(cfg)
    raw = windowed.splits["train"].image(0, 1)
    assert raw.dtype == np.uint8 and windowed.splits["train"].window == (40, 400)
    with pytest.raises(DatasetError, match="dataset.window"):
        cfg.window = [40, 0]
        make_dm(cfg)


# --- augmentation preset and recipes ---------------------------------------------------------


def test_medical_augment_preset_is_geometry_only_and_maps_clahe():
    preset = Augment.from_mapping(OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "augment" / "medical.yaml")))
    assert preset.hflip == preset.vflip == preset.color_jitter == preset.hue == 0
    assert 0 < preset.rotate <= 15 and 0 < preset.shift <= 0.1 and 0 < preset.zoom <= 0.15
    import albumentations as A

    ops = augment_ops(Augment(clahe=0.3, clahe_clip=3.0))
    assert isinstance(ops[0], A.CLAHE) and ops[0].p == 0.3 and ops[0].clip_limit == (1.0, 3.0)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_compose_from_the_package(recipe):
    cfg = compose_config(f"+medical={recipe}")
    assert cfg.dataset.kind == "medmnist" and cfg.dataset.name in MEDMNIST
    assert cfg.backbone.name == "tf_efficientnet_lite0" and cfg.imbalance in (
        "auto",
        "none",
        "weighted_loss",
        "sampler",
    )
    assert cfg.augment.color_jitter <= 0.1
    if recipe in ("pneumonia", "breast"):  # X-ray / ultrasound: 1-channel stem, never flipped upside down
        assert cfg.augment.vflip == 0 and cfg.dataset.grayscale == "adapt"
    if recipe == "pneumonia":  # a mirrored chest X-ray puts the heart on the wrong side
        assert cfg.augment.hflip == 0 and cfg.threshold == "tune"
    if recipe == "breast":  # 21 malignant val images: too few to tune on; the checkpoint picked by val AUC
        assert cfg.threshold == 0.5 and cfg.monitor == "auc"
    override = compose_config(f"+medical={recipe}", "dataset.image_size=28")
    assert override.dataset.image_size == 28  # command-line overrides win over the recipe


def test_a_tuned_threshold_also_reports_the_decisions_at_one_half():
    torch.manual_seed(0)
    images, targets = torch.randn(16, 1, 32, 32), torch.tensor([0, 1] * 8)
    model = tiny_model(2).eval()
    p1 = probabilities(ClassificationTask(model, 2).predict_logits([(images, targets)])[0], "binary")[:, 1]
    threshold = float(p1.sort().values[4:6].mean())  # between the 5th and 6th score: not 0.5's decisions
    results = {}
    for t in (threshold, None, 0.5):
        task = ClassificationTask(model, 2, threshold=t)
        task.log = task.log_dict = lambda *args, **kwargs: None  # no Trainer here
        with torch.no_grad():
            task.test_step((images, targets), 0)
        task.on_test_epoch_end()
        results[t] = task.test_results
    tuned, default = results[threshold], results[None]
    assert float(tuned["acc"]) == pytest.approx(((p1 >= threshold).long() == targets).float().mean().item())
    assert float(tuned["acc_at_0.5"]) == pytest.approx(((p1 >= 0.5).long() == targets).float().mean().item())
    assert float(tuned["balanced_acc_at_0.5"]) == float(default["balanced_acc"])
    for t in (None, 0.5):  # the default threshold: nothing to add
        assert not any(k.endswith("_at_0.5") for k in results[t])


# --- checkpoint selection --------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, tuned, expected",
    [
        ("binary", True, "val/auc"),
        ("binary", False, "val/acc"),
        ("multi-label", False, "val/auc"),
        ("multi-class", True, "val/acc"),
        ("ordinal-regression", False, "val/acc"),
    ],
)
def test_auto_monitor_is_threshold_free_when_the_threshold_comes_later(task, tuned, expected):
    assert monitor_metric(task, tuned) == expected
    assert monitor_metric(task, tuned, "balanced_acc") == "val/balanced_acc"  # an explicit choice wins


def test_a_loss_is_minimised_every_other_monitor_maximised(tmp_path):
    from finetune.training.phases import best_checkpoint

    assert best_checkpoint(tmp_path, "val/loss").mode == "min"
    assert best_checkpoint(tmp_path, "val/auc").mode == "max"


def test_unknown_monitor_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="monitor='dice'.*auc"):
        check_config(compose_config("monitor=dice"))  # a segmentation metric asked of a classifier
    assert check_config(compose_config("monitor=loss"))


# --- end to end -------------------------------------------------------------------------------


def test_breastmnist_end_to_end_writes_auc(shared_data, tmp_path, monkeypatch):
    from finetune.commands import train as run_module

    seen = []
    fit = ClassificationTask.fit_on_validation

    def spy(self, batches, temperature, threshold, min_per_class):
        seen.append((len(batches.dataset), min_per_class))
        return fit(self, batches, temperature, threshold, min_per_class)

    monkeypatch.setattr(ClassificationTask, "fit_on_validation", spy)
    cfg = compose_config(
        "dataset=medmnist",
        "dataset.name=breastmnist",
        f"dataset.root={shared_data / 'medmnist'}",
        "backbone.name=resnet10t",
        "backbone.pretrained=false",
        "dataset.image_size=28",
        "schedule.epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "trainer.progress_bar=false",
        "imbalance=weighted_loss",
        "threshold=tune",
        "threshold_tune_min=10",  # 21 malignant val images are fewer than the default 50: the tuned path runs here
    )
    run_module.train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"acc", "auc", "balanced_acc", "threshold", "acc_at_0.5", "balanced_acc_at_0.5"} <= set(metrics["test"])
    assert 0 <= metrics["test"]["auc"] <= 1 and 0 < metrics["test"]["threshold"] < 1
    assert set(metrics["test_per_class"]["recall"]) == {"malignant", "normal, benign"}
    assert seen == [(78, 10)]  # tuned on the 78 val images, never on the 156 test images
    assert metrics["threshold_tuned"] is True and "threshold_kept_at_0.5" not in metrics
    val_auc = [
        float(row["val/auc"])
        for log in sorted((tmp_path / "logs").glob("*/metrics.csv"))
        for row in csv.DictReader(log.open())
        if row.get("val/auc")
    ]
    assert len(val_auc) == 2  # one validation per phase epoch: the checkpoint had a choice
    assert metrics["checkpoint"] == {
        "monitor": "val/auc",
        "best": pytest.approx(max(val_auc), abs=1e-6),
        "tested": "best.ckpt",
    }
    data = json.loads((tmp_path / "data.json").read_text())
    assert data["grayscale"] == "adapt" and data["model_in_chans"] == 1 and data["task_record"]["type"] == "binary"
    assert data["task_record"]["imbalance"] == {"asked": "weighted_loss", "applied": "weighted_loss"}
