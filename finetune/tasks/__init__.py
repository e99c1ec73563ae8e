"""Tasks: everything that differs between classification and segmentation, behind one interface
(``finetune.tasks.base.Task``); the registry is ``finetune.tasks.registry``."""
