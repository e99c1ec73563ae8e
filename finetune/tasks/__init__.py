"""Tasks: everything that differs between classification and segmentation, behind one interface
(``finetune.run.task.Task``); the registry is ``finetune.tasks.registry``."""
