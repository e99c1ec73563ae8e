"""``finetune inspect <dataset overrides>``: the data before the model (class balance, image sizes and modes,
duplicates and leaks across splits, likely label issues, outliers), with an HTML page, a JSON record and
optionally a cleaned label file."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from finetune.commands.args import compose_config, parse_flag, positive_int, print_error, tool_run_dir
from finetune.commands.tool import tool_main
from finetune.run.errors import FinetuneError

JSON_NAME, HTML_NAME = "inspect.json", "inspect.html"
OPTIONS = {
    "out": None,
    "report": None,
    "drop_label_issues": "false",
    "keep_label_issues": None,
    "features": "true",
    "near_hash": "4",
    "near_cosine": "0.97",
    "show": "30",
}


def main(argv: Sequence[str] | None = None) -> int:
    """finetune inspect: what is in your data before a model trains on it.

    finetune inspect <dataset overrides> [out=clean.csv] [report=DIR]
                     [drop_label_issues=false] [features=true] [near_hash=4]
                     [near_cosine=0.97] [show=30]

    Reads the dataset exactly as `finetune <same overrides>` trains on it (any dataset kind; the
    backbone, image size and splits of the config) and reports, per split: class balance; image sizes,
    modes and channels; exact duplicates (same decoded pixels) and near duplicates (perceptual hash, and
    cosine similarity of the pretrained backbone's pooled features) within and across splits (a leak);
    likely label issues (cleanlab on out-of-fold probabilities of a linear probe on the features: seconds,
    not a training run; classification only); outliers in feature space.

    report=             folder for inspect.html and inspect.json (new or empty); default
                        runs/<time>_inspect_<dataset>_<backbone>
    out=clean.csv       also write a cleaned label file (path,label,split for dataset=csv): exact duplicates
                        kept once, val/test copies of cross-split near duplicates left out; likely label issues
                        kept (listed on the page). It must be a new file outside the data; your files are never
                        touched.
    drop_label_issues=  true: leave the likely label issues of the train split out of out= (val and test keep
                        every image)
    features=false      hashes and data checks only (no backbone)
    near_hash=          perceptual-hash bits (of 64) two near duplicates may differ in
    near_cosine=        feature cosine similarity two near duplicates reach at least
    show=               images shown per finding on the page

    What inspect found is also filed under a fingerprint of the splits ($FINETUNE_INSPECT_CACHE, by default
    ~/.cache/finetune/inspect): training and `finetune advise` on the same data warn when it leaks across splits.
    """
    return tool_main(
        argv,
        main.__doc__,
        OPTIONS,
        "dataset=imagefolder dataset.root=DIR",
        "inspect writes its own folder; choose it with report=DIR",
        lambda own: (own, parse_options(own)),
        lambda parsed, overrides: run(overrides, *parsed),
    )


def parse_options(own: dict) -> dict:
    """Typed values of inspect's own options; one line for a bad one."""
    try:
        cosine = float(own["near_cosine"])
    except ValueError:
        cosine = -1.0
    if not 0 < cosine <= 1:
        raise FinetuneError(f"near_cosine={own['near_cosine']!r}: use a similarity in (0, 1], e.g. 0.97")
    if own["keep_label_issues"] is not None:
        raise FinetuneError(
            "keep_label_issues= was replaced by drop_label_issues= (label issues are now kept by default; "
            "drop_label_issues=true leaves them out of the train split only)"
        )
    bits = own["near_hash"]
    if not (bits or "").isdigit() or int(bits) > 64:
        raise FinetuneError(f"near_hash={bits!r}: use a number of bits from 0 to 64, e.g. 4")
    return {
        "drop_label_issues": parse_flag(own["drop_label_issues"], "drop_label_issues"),
        "features": parse_flag(own["features"], "features"),
        "near_hash": int(bits),
        "near_cosine": cosine,
        "show": positive_int(own["show"], "show"),
    }


def run(overrides: list[str], own: dict, options: dict) -> int:
    """Check the config and out=, inspect, write the page, the record and the cleaned file; an exit code."""
    from finetune.data.inspection.clean import check_out, check_outside
    from finetune.run.config import data_folders
    from finetune.run.rundir import claim_run_dir, forget_claims, release_if_unused
    from finetune.tasks.registry import get_task

    forget_claims()
    report_dir = None
    try:
        cfg = compose_config(overrides)
        if cfg.resume or cfg.plan:
            raise FinetuneError("inspect reads the data of a fresh config: drop resume= and plan=")
        out = check_out(own["out"], data_folders(cfg)) if own["out"] else None
        task = get_task(cfg.task)
        if own["report"]:
            check_outside(own["report"], "report", data_folders(cfg))
            claim_run_dir(own["report"])
            report_dir = Path(own["report"])
        else:
            report_dir = Path(tool_run_dir("inspect", cfg))
        lines = inspect_and_write(task, cfg, report_dir, out, options)
    except (FinetuneError, OSError) as err:
        return print_error(err)
    finally:
        if report_dir is not None:
            release_if_unused(report_dir)
    print("\n".join(lines))
    return 0


def inspect_and_write(task, cfg, report_dir: Path, out: Path | None, options: dict) -> list[str]:
    """Run the inspection, write inspect.json / inspect.html (and out=), file the findings; the console lines."""
    from finetune.data.inspection.clean import check_writable, dropped, write_clean_csv
    from finetune.data.inspection.store import save_findings
    from finetune.report.inspect_page import render_inspection
    from finetune.run.artifacts import write_json, write_text
    from finetune.training.inspect_data import Thresholds, inspect_data, summary

    thresholds = Thresholds(options["near_hash"], options["near_cosine"])
    roots = []

    def check(view) -> None:  # before any image is decoded or the model built
        roots.append(check_writable(view.items, str(out), cfg.dataset.kind))

    result = inspect_data(task, cfg, thresholds, features=options["features"], check=None if out is None else check)
    view = result.view
    record = summary(result) | {
        "thresholds": {"near_hash": thresholds.near_hash, "near_cosine": thresholds.near_cosine}
    }
    html_path = report_dir / HTML_NAME
    lines = console_lines(record)
    if out is not None:
        issues = [r["item"] for r in result.label_issues] if options["drop_label_issues"] else []
        reasons = dropped(view.items, result.exact, [*result.near_hash, *result.near_features], issues)
        rows = write_clean_csv(out, view.items, result.class_names, reasons)
        record["clean_csv"] = {
            "path": str(out.resolve()),
            "rows": rows,
            "left_out": [{"item": k, "name": view.items[k].name, "why": why} for k, why in sorted(reasons.items())],
        }
        lines.append(
            f"wrote {out} ({rows} of {len(view.items)} images; {len(reasons)} left out); train on it with: "
            f"finetune dataset=csv dataset.csv={out.resolve()} dataset.root={roots[0]}"
        )
    names = [(i.split, i.name) for i in view.items]
    title = f"finetune inspect: {cfg.dataset.get('name') or cfg.dataset.kind}"
    write_text(html_path, render_inspection(record, names, view.read, title, options["show"]))
    json_path = write_json(report_dir / JSON_NAME, record)
    save_findings(
        result.fingerprint,
        {"leaks": record["leaks"], "report": str(html_path.resolve()), "written": time.strftime("%Y-%m-%dT%H:%M:%S")},
    )
    lines.append(f"wrote {html_path} and {json_path}")
    return lines


def console_lines(record: dict) -> list[str]:
    """The short console summary."""
    splits = ", ".join(f"{s} {n}" for s, n in record["splits"].items())
    sizes = record["images"]["sizes"]
    top = ", ".join(f"{k} ({v})" for k, v in list(sizes.items())[:3])
    modes = ", ".join(f"{k} ({v})" for k, v in record["images"]["modes"].items())
    leaks = record["leaks"]

    def groups(key: str) -> str:
        found = record[key]
        return f"{len(found)} group(s), {sum(g['cross_split'] for g in found)} across splits"

    lines = [
        f"inspect: {sum(record['splits'].values())} images ({splits}); {len(sizes)} size(s): {top}; modes {modes}",
        *(
            f"  {split}: " + ", ".join(f"{c} {n}" for c, n in per.items())
            for split, per in record["class_balance"].items()
        ),
        f"exact duplicates: {groups('exact_duplicates')}",
        f"near duplicates (perceptual hash): {groups('near_duplicates_hash')}",
    ]
    if record["backbone"]:
        lines += [
            f"near duplicates (features, {record['backbone']}): {groups('near_duplicates_features')}",
            f"likely label issues: {len(record['label_issues'])}; outliers: {len(record['outliers'])}",
        ]
    lines += [f"note: {n}" for n in record["notes"]]
    if leaks["groups"]:
        lines.append(
            f"LEAK: {leaks['groups']} group(s) of copies across splits (exact, or found by both near detectors), "
            f"e.g. {leaks['example']}"
        )
    if leaks["possible"]:
        lines.append(
            f"possible leaks: {leaks['possible']} group(s) across splits found by one near detector only "
            "(not warned about in training; judge them on the page)"
        )
    return lines
