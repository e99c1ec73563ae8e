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


def test_more_images_than_kept_keep_the_lowest_scores_ties_to_the_earlier_image():
    tested = kept.TestedImages(first=1, worst=2)
    truth = torch.ones(4, 4, dtype=torch.long)
    predictions = []
    for hits in [8, 2, 12, 2, 16, 4, 2]:  # foreground IoU hits/16; indices 1, 3 and 6 tie at the lowest
        prediction = torch.zeros(16, dtype=torch.long)
        prediction[:hits] = 1
        predictions.append(prediction.reshape(4, 4))
        tested.add(truth, predictions[-1], num_classes=2, ignore_index=255)
    assert tested.scores == [0.5, 0.125, 0.75, 0.125, 1.0, 0.25, 0.125]
    assert tested.lowest() == [1, 3] and sorted(tested.masks) == [0, 1, 3]  # the first image kept as well
    tested.add(truth, torch.zeros(4, 4, dtype=torch.long), num_classes=2, ignore_index=255)  # 0.0: the new lowest
    assert tested.lowest() == [7, 1] and sorted(tested.masks) == [0, 1, 7]
    for i in (0, 1):
        np.testing.assert_array_equal(tested.masks[i], predictions[i].numpy().astype(np.uint8))
    assert not tested.masks[7].any()
