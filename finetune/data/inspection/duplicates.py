"""Exact and near duplicates: which images are the same picture, within a split or across splits (leakage).

Exact: the same decoded pixels (a hash of shape and bytes: a file saved twice under two names, or in two
splits). Near: the same picture resized, re-encoded or lightly edited, found by a perceptual hash
(``imagehash.phash``: a 64-bit DCT signature; Hamming distance at most ``max_distance``) or by the cosine
similarity of pretrained features (``finetune.training.inspect_data``). Pairs found are joined into groups
(connected components): a group whose members lie in more than one split is a leak.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

BLOCK = 512  # rows compared at once in the all-pairs searches


def pixel_hash(image: np.ndarray) -> str:
    """A hash of the decoded pixels and their shape (two files with equal hashes show the same image)."""
    digest = hashlib.sha1(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def perceptual_hash(image: np.ndarray) -> int:
    """``imagehash.phash`` of an HWC uint8 image, as a 64-bit integer."""
    import imagehash

    picture = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    bits = imagehash.phash(picture).hash.flatten()
    return int(np.packbits(bits).view(">u8")[0])


@dataclass(frozen=True)
class Group:
    """Images found to be copies of each other (indices into the inspected items), the splits they lie in,
    and the closest pair's ``distance`` (exact: 0; perceptual: Hamming bits; features: 1 - cosine)."""

    members: tuple[int, ...]
    splits: tuple[str, ...]
    distance: float

    @property
    def cross_split(self) -> bool:
        return len(self.splits) > 1

    def to_dict(self) -> dict:
        return {
            "members": list(self.members),
            "splits": list(self.splits),
            "cross_split": self.cross_split,
            "distance": round(self.distance, 4),
        }


def exact_pairs(hashes: Sequence[str]) -> list[tuple[int, int, float]]:
    """(i, j, 0) chaining every image to the first with the same pixel hash."""
    first: dict[str, int] = {}
    pairs = []
    for k, digest in enumerate(hashes):
        if digest in first:
            pairs.append((first[digest], k, 0.0))
        else:
            first[digest] = k
    return pairs


def hamming_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, float]]:
    """(i, j, bits) for i < j whose 64-bit hashes differ in at most ``max_distance`` bits."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    pairs = []
    for start in range(0, len(hashes), BLOCK):
        bits = np.bitwise_count(hashes[start : start + BLOCK, None] ^ hashes[None, :])
        rows, cols = np.nonzero(bits <= max_distance)
        keep = cols > rows + start
        pairs += zip((rows[keep] + start).tolist(), cols[keep].tolist(), bits[rows[keep], cols[keep]].tolist())
    return [(i, j, float(d)) for i, j, d in pairs]


def cosine_pairs(features: np.ndarray, min_similarity: float) -> list[tuple[int, int, float]]:
    """(i, j, 1 - cosine) for i < j whose feature vectors have cosine similarity >= ``min_similarity``."""
    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    pairs = []
    for start in range(0, len(x), BLOCK):
        similarity = x[start : start + BLOCK] @ x.T
        rows, cols = np.nonzero(similarity >= min_similarity)
        keep = cols > rows + start
        values = similarity[rows[keep], cols[keep]]
        pairs += zip((rows[keep] + start).tolist(), cols[keep].tolist(), (1.0 - values).tolist())
    return [(i, j, max(0.0, float(d))) for i, j, d in pairs]


def groups_of(
    pairs: Iterable[tuple[int, int, float]], splits: Sequence[str], skip: Iterable[Group] = ()
) -> list[Group]:
    """Connected groups of ``pairs`` over ``len(splits)`` images (``splits[k]``: image k's split), leaving
    out pairs inside one of the groups ``skip`` (e.g. near-duplicate pairs that are exact copies); ranked:
    leaks across splits first, then larger groups, then closer ones."""
    same = {k: g for g in skip for k in g.members}
    pairs = [(i, j, d) for i, j, d in pairs if not (i in same and same.get(j) is same[i])]
    if not pairs:
        return []
    n = len(splits)
    i, j, d = (np.asarray(v) for v in zip(*pairs))
    _, labels = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    closest: dict[int, float] = {}
    for a, distance in zip(i.tolist(), d.tolist()):
        closest[labels[a]] = min(closest.get(labels[a], np.inf), distance)
    found = []
    for label, distance in closest.items():
        members = tuple(int(k) for k in np.flatnonzero(labels == label))
        found.append(Group(members, tuple(dict.fromkeys(splits[k] for k in members)), distance))
    return sorted(found, key=lambda g: (not g.cross_split, -len(g.members), g.distance, g.members))


def leak_groups(
    exact: Iterable[tuple[int, int, float]],
    near_hash: Iterable[tuple[int, int, float]],
    near_features: Iterable[tuple[int, int, float]],
    splits: Sequence[str],
) -> tuple[list[Group], list[Group]]:
    """The cross-split pairs of every detector joined into groups once: (confirmed, possible). A group is
    confirmed when an exact pair or a pair both near detectors found joins it; possible when only one near
    detector links it (e.g. the perceptual hash on look-alike fundus frames)."""

    def across(pairs: Iterable[tuple[int, int, float]]) -> dict[tuple[int, int], float]:
        return {(i, j): d for i, j, d in pairs if splits[i] != splits[j]}

    by_exact, by_hash, by_features = across(exact), across(near_hash), across(near_features)
    sure = {k for pair in set(by_exact) | (set(by_hash) & set(by_features)) for k in pair}
    joined = {**by_features, **by_hash, **by_exact}
    groups = groups_of([(i, j, d) for (i, j), d in joined.items()], splits)
    confirmed = [g for g in groups if sure.intersection(g.members)]
    return confirmed, [g for g in groups if not sure.intersection(g.members)]
