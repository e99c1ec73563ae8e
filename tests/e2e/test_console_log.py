"""What a run prints and what its log file keeps: a progress bar that moves every second and keeps one line on an
80-column terminal, no library chatter (Lightning's tips, lr-find's tqdm bar and checkpoint lines), the no-test-split
line only where the test runs, and ``finetune.log`` as the record of the whole console (issue #29)."""

from __future__ import annotations

import io
import logging
import re
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from rich.table import Table

from finetune.run.console import console, log_file_copy
from finetune.training.display import ThrottledRichProgressBar, fit_metrics, short_metrics

from ..helpers import cli_in_process, compose_config, one_torch_thread

TEST_IS_VAL = "no test split (no test/ folder"  # the line the test phase prints
# A tiny run in two phases (head on cached features, then everything) on a dataset with train/ and val/ only.
TWO_PHASES = [
    "dataset=imagefolder",
    "backbone.name=resnet10t",
    "backbone.pretrained=false",
    "dataset.image_size=32",
    "dataset.num_workers=0",
    "schedule=fastai_like",
    "schedule.epochs=1",
    "schedule.batch_size=8",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.progress_bar=false",
]


def train_and_val_folders(root: Path) -> Path:
    """An image folder with train/ and val/ (no test/): the test runs on val. Two classes of 8 16-px images."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(8):
                pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> tuple[Path, str, list[str]]:
    """The TWO_PHASES run, made once: its run directory, everything it printed and the warnings it showed."""
    base = tmp_path_factory.mktemp("console_log")
    data = train_and_val_folders(base / "data")
    with one_torch_thread(), warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        out = cli_in_process(*TWO_PHASES, f"dataset.root={data}", "hydra.run.dir=run", cwd=base)
    assert out.returncode == 0, out.stderr[-3000:]
    return base / "run", out.stdout + out.stderr, [f"{w.category.__name__}: {w.message}" for w in shown]


def test_the_bar_redraws_every_n_batches_at_the_end_and_at_least_once_a_second():
    bar = ThrottledRichProgressBar(every=10)
    bar._drawn_at = 100.0
    assert not bar.should_redraw(0, 8, now=100.5)  # half a second after the last redraw, not the 10th batch
    assert bar.should_redraw(0, 8, now=101.0)  # a second: an epoch of slow batches moves
    assert bar.should_redraw(9, 100, now=100.1)  # the 10th batch
    assert bar.should_redraw(7, 8, now=100.1)  # the epoch's last batch


def test_the_bar_metrics_are_short_and_only_those_that_fit():
    metrics = {"train/loss_step": 1.96412, "val/loss": 2.28341, "val/acc": 0.1875, "val/balanced_acc": 0.1}
    short = short_metrics({**metrics, "train/loss_epoch": 2.1843}, monitor="val/acc")
    assert short == {"loss": "2.18", "val/acc": "0.188", "val/loss": "2.28", "val/bal_acc": "0.1"}
    assert fit_metrics(short, 27) == {"loss": "2.18", "val/acc": "0.188"}  # "loss: 2.18 val/acc: 0.188" is 25


def test_train_metrics_keep_a_train_prefix_only_the_loss_goes_without():
    metrics = {"train/loss_step": 0.9, "train/loss_epoch": 0.7, "train/acc": 0.571, "val/acc": 0.5}
    short = short_metrics({**metrics, "train/balanced_acc": 0.55}, monitor="train/acc")
    assert short == {"loss": "0.7", "train_acc": "0.571", "val/acc": "0.5", "train_bal_acc": "0.55"}


class _Toy(L.LightningModule):
    """A linear model that logs the metrics a classification run shows on its bar."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).square().mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        for name in ("loss", "acc", "balanced_acc", "f1_macro", "auc", "acc_top5"):
            self.log(f"val/{name}", 0.123456, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_bar_keeps_one_line_on_an_80_column_terminal(tmp_path):
    """The bar as rich lays it out 80 columns wide (the final frame, printed once to a file): the phase, the batch
    count and the metrics that fit on the bar's one line, none wrapped onto a second."""
    import rich

    out = io.StringIO()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 4)), batch_size=4)
    bar = ThrottledRichProgressBar(every=10, phase="probe", leave=True, console_kwargs={"width": 80, "file": out})
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[bar],
        default_root_dir=tmp_path,
    )
    try:
        trainer.fit(_Toy(), loader, loader)
    finally:
        rich.reconfigure()  # Lightning's bar set rich's global console to ours
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    epoch = [line for line in lines if "probe · epoch 1/1" in line]
    assert len(epoch) == 1 and "4/4" in epoch[0] and "loss: " in epoch[0] and "val/loss: 0.123" in epoch[0]
    assert max(map(len, lines)) <= 80
    assert not [line for line in lines if "val/" in line and line not in epoch]  # no metric wrapped


def test_the_log_file_copy_keeps_console_lines_and_warnings(tmp_path):
    log_file = tmp_path / "finetune.log"
    root = logging.Logger("a-root")
    root.addHandler(handler := logging.FileHandler(log_file))
    table = Table("metric", "value", title="test results")
    table.add_row("acc", "0.9741")
    try:
        with log_file_copy(root), warnings.catch_warnings():
            warnings.simplefilter("always")
            console.print(table)
            warnings.warn("something the user should see", UserWarning, stacklevel=1)
        console.print("after the run: not recorded")
    finally:
        handler.close()
    text = log_file.read_text()
    assert re.search(r"test results\n.*\n.*metric.*value.*\n.*\n.*acc.*0\.9741", text)
    assert "UserWarning: something the user should see" in text and "not recorded" not in text


def test_finetune_log_is_the_record_of_the_run(logged_run):
    """Each phase's header and epoch line, the no-test-split warning, every warning shown (here torchmetrics' on a
    class absent from the one val batch) and the test results are in finetune.log; the console said the
    no-test-split line once, where the test ran."""
    run_dir, printed, shown = logged_run
    log = (run_dir / "finetune.log").read_text()
    assert "phase 1/2 'frozen': 1 epoch(s), freeze=all" in log and "phase 2/2 'unfrozen'" in log
    for phase in ("frozen", "unfrozen"):
        assert re.search(rf"INFO: {phase} · epoch 1/1: loss [\d.]+ val/loss [\d.]+ val/acc [\d.]+", log), log
    assert log.count(TEST_IS_VAL) == 1 and log.index("phase 2/2") < log.index(TEST_IS_VAL) < log.index("│ acc ")
    assert re.search(r"│ acc\s+│ [\d.]+ │", log) and "run directory:" in log and "report:" in log
    assert shown and all(f"WARNING: {warning}" in log for warning in shown)
    assert printed.count(TEST_IS_VAL) == 1
    assert "💡" not in printed and "Tip:" not in printed


def test_lr_find_prints_its_result_and_no_library_chatter(logged_run, capfd):
    """lr-find on the same data (no test split): its summary, without Lightning's tips, the tqdm bar of its scan,
    "Restoring states …" of its temporary checkpoint, nor the no-test-split line (lr-find tests nothing)."""
    run_dir, _, _ = logged_run
    data = run_dir.parent / "data"
    lightning_lines = io.StringIO()  # Lightning's handler writes to the stderr of its import: read its records here
    handler = logging.StreamHandler(lightning_lines)
    logging.getLogger("lightning.pytorch").addHandler(handler)
    try:
        with one_torch_thread():
            out = cli_in_process("lr-find", *TWO_PHASES, f"dataset.root={data}", "steps=20", cwd=run_dir.parent)
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(handler)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = out.stdout + out.stderr + "".join(capfd.readouterr()) + lightning_lines.getvalue()
    assert "suggested lr" in printed
    for chatter in ("Tip:", "Finding best initial lr", "it/s", "Restoring states", "Restored all states", TEST_IS_VAL):
        assert chatter not in printed, chatter


def test_a_segmentation_encoder_loads_its_weights_without_timms_unexpected_keys_warning(caplog):
    """A features_only encoder leaves the pretrained classifier out on purpose: timm's warning about its tensors is
    dropped where finetune builds one (and only there: timm's own call still warns)."""
    from finetune.models.decoders import build_segmentation_model
    from finetune.models.factory import decoder_model
    from finetune.models.weights import resolve_weights

    record = resolve_weights("tf_efficientnet_lite0")  # pip package, real ImageNet weights
    cfg = compose_config("task=segmentation", "dataset=seg_folder", "head=unet", "backbone=efficientnet_lite0")
    with caplog.at_level(logging.INFO, logger="timm"):
        decoder_model(cfg, record, 3, 2)
    # (not "Loaded weights": finetune.models.weights logs that once per process, so it depends on the tests before;
    # the second build below proves the capture works)
    assert "Unexpected keys" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="timm"):
        build_segmentation_model(record, "unet", 3, 2)
    assert "Unexpected keys (bn2." in caplog.text


def test_export_and_report_of_a_run_without_a_test_split_do_not_say_so(logged_run, tmp_path, caplog):
    """They test nothing: the no-test-split line belongs to training's test phase (and the report's own wording)."""
    run_dir, _, _ = logged_run
    with one_torch_thread(), caplog.at_level(logging.INFO):
        exported = cli_in_process("export", f"run={run_dir}", "format=safetensors", f"out={tmp_path}", cwd=tmp_path)
        reported = cli_in_process("report", f"run={run_dir}", cwd=tmp_path)
    for out in (exported, reported):
        assert out.returncode == 0, out.stderr[-3000:]
        assert TEST_IS_VAL not in out.stdout + out.stderr and "Tip:" not in out.stdout + out.stderr
    assert (tmp_path / "model.safetensors").is_file() and TEST_IS_VAL not in caplog.text
