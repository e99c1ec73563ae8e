"""Small shared helpers: ``run.errors.one_line`` and the inspection's "a test split that is val counts once"."""

from __future__ import annotations

import numpy as np

from finetune.data.inspection.items import DatasetView, distinct_splits
from finetune.data.inspection.store import fingerprint
from finetune.data.sources import Samples
from finetune.run.errors import MAX_LISTED, one_line


def test_one_line_lists_the_first_few_and_counts_the_rest():
    assert one_line(["a", "b"]) == "a; b"
    named = [f"f{i}" for i in range(MAX_LISTED + 2)]
    assert one_line(named) == "; ".join(named[:MAX_LISTED]) + "; ... and 2 more"


def _samples(n: int, value: int) -> Samples:
    return Samples(np.full((n, 4, 4, 1), value, np.uint8), np.zeros(n, np.int64))


def test_a_test_split_that_is_val_counts_once_in_the_view_and_the_fingerprint():
    train, val = _samples(3, 1), _samples(2, 2)
    repeated = {"train": train, "val": val, "test": val}
    assert list(distinct_splits(repeated)) == ["train", "val"]
    equal_copy = {"train": train, "val": val, "test": _samples(2, 2)}  # the same pixels, another split
    assert list(distinct_splits(equal_copy)) == ["train", "val", "test"]
    view = DatasetView(repeated, "digits")
    assert view.splits == ["train", "val"] and [item.split for item in view.items] == ["train"] * 3 + ["val"] * 2
    assert fingerprint(repeated) == fingerprint({"train": train, "val": val}) != fingerprint(equal_copy)
