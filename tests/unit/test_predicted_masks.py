"""``tasks.segmentation.overlays.predicted_masks``: the masks the test would predict, for the images asked."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from finetune.data.segmentation import SegmentationDataModule
from finetune.data.transforms import Preprocessing
from finetune.tasks.segmentation.overlays import predicted_masks

from ..helpers import squares


def test_each_asked_image_gets_its_predicted_mask_and_truth_in_the_order_asked(tmp_path):
    squares(tmp_path, n=10)  # bright squares (the foreground) on dark noise
    config = {"kind": "seg_folder", "root": str(tmp_path), "mask_mode": "binary", "crop_size": 32}
    data = SegmentationDataModule({**config, "num_workers": 0, "test_fraction": 0.3}, {}, 4, 0)
    data.set_preprocessing(Preprocessing((32, 32), (0.5,) * 3, (0.5,) * 3, "bilinear", 3))
    bright = nn.Conv2d(3, 2, 1)  # class 1 where the normalised channels sum above 0: the squares
    with torch.no_grad():
        bright.weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 3, 1, 1))
        bright.bias.zero_()
    modes = []  # the model's mode at each forward
    bright.register_forward_pre_hook(lambda module, _: modes.append(module.training))
    asked = [1, 0]
    masks = predicted_masks(bright, data, "test", asked)
    got = [next(masks)]
    assert modes and not any(modes) and bright.training  # predicted in eval mode; its mode back, masks unfinished
    got.append(next(masks))
    assert next(masks, None) is None and not any(modes) and bright.training
    for i, (prediction, truth) in zip(asked, got, strict=True):
        expected = data.raw_pair("test", i)[1]  # 64x64 in 32 px tiles, back at full size
        assert prediction.dtype == np.uint8 and prediction.shape == expected.shape == (64, 64)
        np.testing.assert_array_equal(prediction, expected)
        np.testing.assert_array_equal(truth.numpy(), expected)
    assert not np.array_equal(got[0][0], got[1][0])
