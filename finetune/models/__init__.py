"""The network: timm backbones (offline-first weights), stages and freezing, heads, decoders,
layer counting.

This file holds only the names the config checks need (no torch import), so a bad config is
reported in a second; the builders in the submodules are keyed by the same names.
"""

ADAPTERS = ("none", "lora", "dora", "bitfit")  # backbone.adapter (finetune.models.adapters)
BN_POLICIES = ("frozen", "train")  # BatchNorm in frozen stages: eval mode kept | statistics updated
HEADS = ("linear", "mlp")  # classification heads (finetune.models.heads)
DECODERS = ("unet", "fpn", "deeplabv3plus")  # segmentation decoders (finetune.models.decoders, smp)
