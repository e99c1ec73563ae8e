"""What a segmentation test keeps (``finetune.tasks.segmentation.tested``): the lowest-scoring masks, one file per
tested image even where two test images share a file name (e.g. ``a/img.png`` and ``b/img.png``)."""

from __future__ import annotations

import numpy as np
import torch

from finetune.tasks.segmentation import tested as kept


def test_two_images_with_the_same_stem_keep_their_own_masks(tmp_path):
    tested = kept.TestedImages(first=0, worst=3)
    truth = torch.ones(4, 4, dtype=torch.long)
    predictions = [torch.zeros(4, 4, dtype=torch.long), torch.ones(4, 4, dtype=torch.long), torch.eye(4).long()]
    predictions[0][0, 0] = 1  # scores: 1/16, 1, 4/16
    for prediction in predictions:
        tested.add(truth, prediction, num_classes=2, ignore_index=255)
    tested.save(tmp_path, ["img", "other", "img"])  # images 0 and 2: same stem, other folders
    assert len(list((tmp_path / kept.LOWEST_DIR).glob("*.png"))) == 3
    scored = kept.read_scores(tmp_path)
    assert [(s.index, s.stem, s.score) for s in scored] == [(0, "img", 0.0625), (1, "other", 1.0), (2, "img", 0.25)]
    for image, prediction in zip(scored, predictions, strict=True):
        np.testing.assert_array_equal(kept.read_lowest(tmp_path, image), prediction.numpy().astype(np.uint8))
