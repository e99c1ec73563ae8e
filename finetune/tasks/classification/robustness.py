"""Classification's ``score_images`` (``finetune evaluate``): the test's metrics of decoded images, decided
as the run's test decided (its flips, temperature and threshold), and the ECE of those probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from finetune.export.loading import LoadedExport
from finetune.run.task import Scores
from finetune.tasks.classification.calibration import calibration_errors
from finetune.tasks.classification.module import classification_metrics, probabilities, task_type
from finetune.tasks.classification.predict_labels import is_multilabel, tested_logits, tested_threshold

BATCH = 64


def score_images(
    exported: LoadedExport, images: Sequence[np.ndarray], targets: np.ndarray, batch_size: int = BATCH
) -> Scores:
    """acc, balanced_acc, f1_macro, auc (the test's definitions) and ece of ``images`` against ``targets``."""
    multilabel = is_multilabel(exported)
    kind = task_type(len(exported.class_names), multilabel)
    logits = torch.from_numpy(
        np.concatenate([tested_logits(exported, images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    ).float()
    threshold = tested_threshold(exported)
    metrics = classification_metrics(len(exported.class_names), multilabel, False, kind)
    metrics.update(logits, torch.as_tensor(np.asarray(targets)), threshold)
    values = {name: float(value) for name, value in metrics.compute().items()}
    probs = probabilities(logits, kind).numpy()
    values["ece"] = calibration_errors(probs, np.asarray(targets), multilabel)["ece"]
    return Scores(values, probs, kind, threshold)
