"""``inspect.html``: what ``finetune inspect`` found in a dataset, one self-contained page (thumbnails
embedded as ``data:`` URIs, the report's style). The leaks across splits come first (confirmed, then
possible: linked by one near detector only); within each detector, groups that leak across splits first;
label issues by how little the probe believes the given label; outliers by how far they lie from their
neighbours."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from html import escape

import numpy as np

from finetune.report.html import CSS
from finetune.report.page import array_img, key_values, table

CARD_SIDE = 112


def _card(read: Callable[[int], np.ndarray], item: int, caption: str) -> str:
    return f'<div class="card">{array_img(read(item), caption, side=CARD_SIDE)}<br>{escape(caption)}</div>'


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-width + 1 :]


def _groups(title: str, what: str, groups: Sequence[Mapping], read, names: Sequence[str], show: int) -> str:
    if not groups:
        return f"<h2>{escape(title)}</h2><p class='note'>none found ({escape(what)}).</p>"
    cross = sum(g["cross_split"] for g in groups)
    parts = [
        f"<h2>{escape(title)}</h2><p class='note'>{len(groups)} group(s), {cross} across splits ({escape(what)})"
        + (f"; the first {show} shown" if len(groups) > show else "")
        + ".</p>"
    ]
    for rank, group in enumerate(groups[:show], 1):
        possible = group.get("confirmed") is False  # a leak group only one near detector links
        label = "across splits" if group["cross_split"] else "within " + group["splits"][0]
        label += ", possible: one near detector only" if possible else ""
        css = ' class="bad"' if group["cross_split"] and not possible else ""
        cards = "".join(_card(read, k, f"{names[k][0]} · {_short(names[k][1])}") for k in group["members"][:8])
        more = f"<p class='note'>… and {len(group['members']) - 8} more</p>" if len(group["members"]) > 8 else ""
        parts.append(
            f"<h3{css}>#{rank}: {len(group['members'])} images, {label} (distance {group['distance']:g})</h3>"
            f'<div class="gallery">{cards}</div>{more}'
        )
    return "".join(parts)


def _ranked(title: str, what: str, rows: Sequence[Mapping], read, caption: Callable[[Mapping], str], show: int) -> str:
    if not rows:
        return f"<h2>{escape(title)}</h2><p class='note'>none found ({escape(what)}).</p>"
    cards = "".join(_card(read, r["item"], caption(r)) for r in rows[:show])
    shown = f"; the first {show} shown" if len(rows) > show else ""
    head = f"<h2>{escape(title)}</h2><p class='note'>{len(rows)} image(s) ({escape(what)}){shown}.</p>"
    return f"{head}<div class='gallery'>{cards}</div>"


def render_inspection(
    record: Mapping, names: Sequence[tuple[str, str]], read: Callable[[int], np.ndarray], title: str, show: int = 30
) -> str:
    """The page for inspect.json's ``record``; ``names[k]``: item k's (split, name); ``read(k)``: its pixels."""
    leaks = record["leaks"]
    overview = key_values(
        [
            ("images per split", ", ".join(f"{s}: {n}" for s, n in record["splits"].items())),
            ("backbone (features)", record["backbone"] or "none: hashes only"),
            (
                "leaks across splits (exact, or both near detectors)",
                f"{leaks['groups']}; by detector: {', '.join(f'{k} {v}' for k, v in leaks['by_detector'].items())}",
            ),
            ("possible leaks (one near detector only)", leaks["possible"]),
            ("likely label issues", len(record["label_issues"])),
            ("outliers", len(record["outliers"])),
            ("fingerprint", record["fingerprint"]),
        ]
    )
    classes = sorted({c for per in record["class_balance"].values() for c in per})
    balance = table(
        ["class", *record["class_balance"]],
        [[c, *(per.get(c, 0) for per in record["class_balance"].values())] for c in classes],
        numeric=range(1, 1 + len(record["class_balance"])),
    )
    images = record["images"]
    facts = "".join(
        f"<div><h3>{escape(key)}</h3>"
        + table([key, "images"], list(images[key].items())[:12], numeric=[1])
        + (f"<p class='note'>… {len(images[key]) - 12} more</p>" if len(images[key]) > 12 else "")
        + "</div>"
        for key in ("sizes", "modes", "channels")
    )
    t = record["thresholds"]
    page = [
        f"<h2>Overview</h2>{overview}",
        "".join(f"<p class='note'>{escape(n)}</p>" for n in record["notes"]),
        f"<h2>Class balance</h2>{balance if classes else '<p class=note>no per-image classes</p>'}",
        f"<h2>Images</h2><div class='cols'>{facts}</div>",
        _groups(
            "Leaks across splits",
            "every detector's cross-split pairs joined; possible: linked by one near detector only",
            record["leak_groups"],
            read,
            names,
            show,
        ),
        _groups("Exact duplicates", "same decoded pixels", record["exact_duplicates"], read, names, show),
        _groups(
            "Near duplicates: perceptual hash",
            f"phash differs in at most {t['near_hash']} of 64 bits",
            record["near_duplicates_hash"],
            read,
            names,
            show,
        ),
        _groups(
            "Near duplicates: pretrained features",
            f"cosine similarity at least {t['near_cosine']}",
            record["near_duplicates_features"],
            read,
            names,
            show,
        ),
        _ranked(
            "Likely label issues",
            "cleanlab find_label_issues on out-of-fold linear-probe probabilities",
            record["label_issues"],
            read,
            lambda r: f"{r['split']} · given {r['given_label']} → {r['suggested_label']} (p={r['confidence']:.2f})",
            show,
        ),
        _ranked(
            "Outliers in feature space",
            "cleanlab OutOfDistribution kNN distance, robust z > 3.5",
            record["outliers"],
            read,
            lambda r: f"{r['split']} · z={r['z']:.1f} · {_short(r['name'], 24)}",
            show,
        ),
    ]
    subtitle = f"written {datetime.now():%Y-%m-%d %H:%M}"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{escape(title)}</h1><p class="sub">{escape(subtitle)}</p>' + "".join(page) + "</body></html>\n"
    )
