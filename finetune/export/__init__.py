"""Exports of a trained run, one job per module (nothing is imported here; the commands import lazily):

bundle (what is exported, its metadata) · tensors (safetensors head delta / full model, fingerprint) ·
registry (``FORMATS``, light: what each format is) · formats (their writers and loaders) · folders
(``format=timm``: a folder timm or smp opens) · merging (adapters folded into the weights) · parity (the
parity gate) · writing (export a bundle or a run) · loading (open any export, preprocess, inputs) · predict_io
(what ``finetune predict`` shares between tasks; each task's output via ``Task.predict_files``) · init_head
(``init_from``).
The commands are ``finetune.commands.export`` and ``finetune.commands.predict``.
"""
