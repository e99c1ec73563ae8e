"""Exports of a trained run, one job per module (nothing is imported here; the commands import lazily):

bundle (what is exported, its metadata) · tensors (safetensors head delta / full model, fingerprint) ·
formats (the format registry: writers and loaders) · loading (open any export, preprocess, inputs) ·
parity (the parity gate) · writing (export a bundle or a run) · init_head (``init_from``) ·
cli (``finetune export``) · predict (``finetune predict``; per-task output via ``Task.predict_files``).
"""
