"""``finetune inspect``'s data side: every image of a dataset's splits as read for training (``items``), exact
and near duplicates within and across splits (``duplicates``), the fingerprint its findings are kept under
so training can warn about leaking splits (``store``), and the cleaned label file (``clean``). Nothing here
needs a model; the feature-based detectors are in ``finetune.training.inspect_data``."""
