"""ImageNet-C-style corruptions (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations", ICLR 2019) built from albumentations 2 (the ``imagecorruptions``
package imports ``pkg_resources``, which current setuptools no longer ships).

Each corruption is one albumentations transform with ImageNet-C's five severity parameters where the
transform takes the same parameter (ImageNet-C's ``corruptions.py``):

===============  =========================  ===================================================
corruption       albumentations             severities 1..5 (ImageNet-C's) and differences
===============  =========================  ===================================================
gaussian_noise   GaussNoise                 std 0.08 .12 .18 .26 .38 (of 255): same
shot_noise       ShotNoise                  photons 60 25 12 5 3 (scale 1/c): drawn in linear light
impulse_noise    SaltAndPepper              amount .03 .06 .09 .17 .27: same
defocus_blur     Defocus                    (radius, alias) (3,.1) (4,.5) (6,.5) (8,.5) (10,.5): same
glass_blur       GlassBlur                  (sigma, delta, iterations) as ImageNet-C: same
motion_blur      MotionBlur                 ImageMagick's (radius, sigma) (10,3) (15,5) (15,8) (15,12)
                                            (20,15) → a centred line of 2·sigma+1 px, angle ±45°
zoom_blur        ZoomBlur                   max zoom 1.11 1.16 1.21 1.26 1.31, steps .01 .01 .02 .02 .03
fog              RandomFog                  fog coefficient .3 .4 .5 .6 .7: albumentations' fog, not
                                            ImageNet-C's plasma fractal (our severities); a gray
                                            image is fogged as RGB and converted back to L
brightness       RandomBrightnessContrast   +.1 .2 .3 .4 .5 of 255 to every channel (ImageNet-C: to V)
contrast         ColorJitter(contrast)      factor .4 .3 .2 .1 .05 towards the mean gray: same up to
                                            the mean (gray level, ImageNet-C: of all channels)
pixelate         Downscale                  factor .6 .5 .4 .3 .25 (area down, nearest up): same
jpeg_compression ImageCompression           quality 25 18 15 10 7: same
===============  =========================  ===================================================

Not included: snow, frost (ImageNet-C's frost photographs), elastic_transform, and the extra
speckle_noise, gaussian_blur, spatter, saturate. Like ImageNet-C's, the parameters are set for 224 px
images; here the decoded image is corrupted at its stored size.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
from PIL import Image

from finetune.data.corruptions import CorruptionSet

SEVERITY_PARAMETERS: dict[str, list] = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "zoom_blur": [(1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)],
    "fog": [0.3, 0.4, 0.5, 0.6, 0.7],
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "jpeg_compression": [25, 18, 15, 10, 7],
}
RGB_ONLY = frozenset({"fog"})  # albumentations takes colour images only


def transform(name: str, c) -> A.BasicTransform:
    """The albumentations transform of corruption ``name`` with ImageNet-C parameter ``c`` (always applied)."""
    if name == "gaussian_noise":
        return A.GaussNoise(std_range=(c, c), mean_range=(0, 0), p=1)
    if name == "shot_noise":
        return A.ShotNoise(scale_range=(1 / c, 1 / c), p=1)
    if name == "impulse_noise":
        return A.SaltAndPepper(amount=(c, c), salt_vs_pepper=(0.5, 0.5), p=1)
    if name == "defocus_blur":
        return A.Defocus(radius=(c[0], c[0]), alias_blur=(c[1], c[1]), p=1)
    if name == "glass_blur":
        return A.GlassBlur(sigma=c[0], max_delta=c[1], iterations=c[2], p=1)
    if name == "motion_blur":
        size = 2 * c[1] + 1
        # a centred line is the same at θ and θ + 180°: 135..225° is ImageNet-C's ±45°
        return A.MotionBlur(
            blur_limit=(size, size), angle_range=(135, 225), direction_range=(0, 0), allow_shifted=False, p=1
        )
    if name == "zoom_blur":
        return A.ZoomBlur(max_factor=(c[0], c[0]), step_factor=(c[1], c[1]), p=1)
    if name == "fog":
        return A.RandomFog(fog_coef_range=(c, c), alpha_coef=0.08, p=1)
    if name == "brightness":
        return A.RandomBrightnessContrast(brightness_limit=(c, c), contrast_limit=(0, 0), p=1)
    if name == "contrast":
        return A.ColorJitter(brightness=0, contrast=(c, c), saturation=0, hue=0, p=1)
    if name == "pixelate":
        pair = {"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST}
        return A.Downscale(scale_range=(c, c), interpolation_pair=pair, p=1)
    if name == "jpeg_compression":
        return A.ImageCompression(quality_range=(c, c), p=1)
    raise KeyError(name)


class Corruption:
    """One corruption at its five severities: the transforms, seeded per image."""

    def __init__(self, name: str) -> None:
        self.transforms = [transform(name, c) for c in SEVERITY_PARAMETERS[name]]
        self.rgb_only = name in RGB_ONLY

    def __call__(self, image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        op = self.transforms[severity - 1]
        op.set_random_state(rng, random.Random(int(rng.integers(2**31))))
        if image.shape[2] == 1 and self.rgb_only:  # as MedMNIST-C: corrupt as RGB, back to Pillow's L
            rgb = op(image=np.repeat(image, 3, axis=2))["image"]
            return np.asarray(Image.fromarray(rgb).convert("L"))[..., None]
        return op(image=image)["image"].reshape(image.shape)


def corruption_set(dataset: str | None) -> CorruptionSet:
    """The ImageNet-C-style set (the same for every dataset)."""
    return CorruptionSet(
        "imagenet-c",
        {name: Corruption(name) for name in SEVERITY_PARAMETERS},
        notes=["ImageNet-C-style corruptions from albumentations (finetune/data/corruptions/imagenet_c.py)"],
    )
