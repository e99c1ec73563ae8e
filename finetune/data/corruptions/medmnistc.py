"""MedMNIST-C (Di Salvo et al., "MedMNIST-C: Comprehensive benchmark and improved classifier robustness
by simulating realistic image corruptions", arXiv 2406.17536) from the ``medmnistc`` package: its
per-dataset corruptions and severities (``CORRUPTIONS_DS``) and its summary (``eval.Evaluator``:
balanced error per corruption, normalised to the paper's AlexNet baseline, ``utils/baselines.py``).

As the package's ``DatasetManager`` does, an image is corrupted as RGB and a grayscale dataset's result
converted back with Pillow's ``L``. The paper corrupts the 224 px files; here the decoded image is
corrupted at its stored size, where a severity is relatively stronger. The package's motion blur reads
ImageMagick's output with ``np.fromstring``, which numpy 2 removed: ``MotionBlur`` below is the same
corruption read with ``np.frombuffer`` (and gray output at any size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from io import BytesIO

import numpy as np
from PIL import Image

from finetune.data.corruptions import SEVERITIES, CorruptionSet, NotApplicable
from finetune.run.errors import ConfigError

INSTALL = (
    "pip install --no-deps medmnistc==0.1.0 wand (medmnistc pins older scikit-image and opencv-python; "
    "it works with ours)"
)
MAGICKWAND = (
    "corruptions=medmnistc needs ImageMagick's MagickWand library for its blurs: apt-get install "
    "libmagickwand-6.q16-6 (Debian/Ubuntu), brew install imagemagick (macOS)"
)
# Our task types -> the task names of medmnistc's Evaluator (MedMNIST's INFO)
EVALUATOR_TASKS = {
    "binary": "binary-class",
    "multi-class": "multi-class",
    "ordinal-regression": "ordinal-regression",
    "multi-label": "multi-label, binary-class",
}


def _registry() -> Mapping[str, Mapping]:
    try:
        from medmnistc.corruptions.registry import CORRUPTIONS_DS
    except ImportError as err:
        raise ConfigError(MAGICKWAND if "MagickWand" in str(err) else f"corruptions=medmnistc: {INSTALL}") from None
    return CORRUPTIONS_DS


def motion_blur(corruptor):
    """The package's ``MotionBlur`` with its severities, readable under numpy 2."""
    from medmnistc.corruptions.filter import MotionBlur, MotionImage

    class FixedMotionBlur(MotionBlur):
        def apply(self, img: Image.Image, severity: int = -1, augmentation: bool = False) -> np.ndarray:
            radius, sigma = self.severity_params[severity]
            buffer = BytesIO()
            img.save(buffer, format="PNG")
            blurred = MotionImage(blob=buffer.getvalue())
            blurred.motion_blur(radius=radius, sigma=sigma, angle=np.random.uniform(-45, 45))
            import cv2

            out = cv2.imdecode(np.frombuffer(blurred.make_blob("png"), np.uint8), cv2.IMREAD_UNCHANGED)
            out = np.repeat(out[..., None], 3, axis=2) if out.ndim == 2 else out[..., [2, 1, 0]]  # BGR(A) -> RGB
            return np.clip(out, 0, 255).astype(np.uint8)

    return FixedMotionBlur(corruptor.severity_params)


def apply(corruptor, image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """One package corruption of an HWC uint8 image (1 or 3 channels), as the package's DatasetManager does."""
    corruptor.rng = rng  # impulse noise draws from it (DatasetManager sets it the same way)
    gray = image.shape[2] == 1
    rgb = Image.fromarray(image[..., 0] if gray else image).convert("RGB")
    try:
        out = np.asarray(corruptor.apply(rgb, severity - 1)).astype(np.uint8)
    except ValueError as err:  # random.randint's empty range: no room to place a stain or bubble
        if "empty range" not in str(err):
            raise
        raise NotApplicable(f"no room to place it in {image.shape[1]}x{image.shape[0]} px ({err})") from None
    if gray:
        return np.asarray(Image.fromarray(out).convert("L"))[..., None]
    return out


def corruption_set(dataset: str | None) -> CorruptionSet:
    """MedMNIST-C's corruptions of ``dataset`` (a MedMNIST subset name)."""
    registry = _registry()
    if dataset not in registry:
        raise ConfigError(
            f"corruptions=medmnistc defines corruptions per MedMNIST dataset ({', '.join(sorted(registry))}); "
            f"this run's dataset is {dataset or 'not a MedMNIST subset'}: use corruptions=imagenet-c"
        )
    corruptors = {name: motion_blur(c) if name == "motion_blur" else c for name, c in registry[dataset].items()}
    return CorruptionSet(
        "medmnistc",
        {name: partial(apply, c) for name, c in corruptors.items()},
        summary=partial(paper_summary, dataset),
        notes=[
            f"MedMNIST-C corruptions of {dataset} (medmnistc 0.1.0); the paper corrupts 224 px images, "
            "here each image is corrupted at its stored size"
        ],
    )


def paper_summary(
    dataset: str,
    task: str,
    labels: np.ndarray,
    clean: np.ndarray,
    corrupted: Mapping[str, Sequence[np.ndarray]],
    threshold: float | list[float] | None,
) -> dict:
    """The paper's summary by medmnistc's ``Evaluator``: balanced error (BE) per corruption, mean over its
    5 severities, normalised to AlexNet's (``be``) and relative to the clean error (``rbe``), and their means.
    ``clean``: probabilities of the clean images; ``corrupted``: per corruption, those of severities 1..5."""
    from medmnistc.eval import Evaluator
    from medmnistc.utils.baselines import BASELINES

    baseline = BASELINES.get(dataset, {}).get("raw_scores", {})
    names = [name for name in corrupted if name in baseline and len(corrupted[name]) == len(SEVERITIES)]
    if not names:
        return {"note": "the paper's summary needs all 5 severities of a corruption the paper reports"}
    labels = labels.reshape(len(labels), -1)
    evaluator = Evaluator(dataset, labels, names, "", "finetune", EVALUATOR_TASKS[task])
    cut = 0.5 if threshold is None else threshold
    evaluator.evaluate_clean(clean, cut)
    for name in names:
        evaluator.evaluate(np.concatenate(list(corrupted[name])), name, cut)
    evaluator.output_log = {}
    try:
        evaluator.populate_summary()
    except AssertionError:  # the package asserts a non-zero clean error
        return {"note": "the clean balanced error is 0: the package's relative error is undefined"}
    log = evaluator.output_log
    return {
        "clean_balanced_error": float(log["metrics"]["clean_score"]),
        "be": float(log["metrics"]["be"]),
        "rbe": float(log["metrics"]["rbe"]),
        "balanced_error": {k: float(v) for k, v in log["raw_scores"].items()},
        "be_per_corruption": {k: float(v) for k, v in log["be_scores"].items()},
        "rbe_per_corruption": {k: float(v) for k, v in log["rbe_scores"].items()},
        "alexnet_balanced_error": {k: baseline[k] for k in names},
        "corruptions": names,
        "complete": sorted(names) == sorted(baseline),
    }
