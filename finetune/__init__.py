"""finetune: turn an ImageNet-pretrained timm backbone into a model for your images."""

__version__ = "0.1.0"
