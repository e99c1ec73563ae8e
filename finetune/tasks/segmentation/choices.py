"""Names the segmentation config checks and its LightningModule share (no torch import)."""

LOSSES = ("ce", "dice", "ce_dice", "focal")
BINARY_MONITORS = ("dice", "iou", "auc")  # foreground scores, logged for binary tasks only
MONITORS = ("miou", "mdice", "pixel_acc", *BINARY_MONITORS, "loss")
