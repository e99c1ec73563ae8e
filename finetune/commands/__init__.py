"""The command bodies of the ``finetune`` console command (``finetune.cli`` dispatches to them).

The top layer: a command resolves the task of a config or run (``finetune.tasks``) and hands it to
the layers below (``training``, ``export``, ``report``), which never look a task up themselves.
"""
