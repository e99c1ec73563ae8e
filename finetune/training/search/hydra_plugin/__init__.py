"""``hydra_plugins.finetune_search`` (pyproject's package-dir maps it here): Hydra instantiates only plugins
whose class lives under ``hydra_plugins.`` and knows a class by its module, so ``hydra/sweeper=search`` names
``hydra_plugins.finetune_search.SearchSweeper``, this subclass. Hydra's scan of ``hydra_plugins`` finds it in
an installed wheel; ``finetune.commands.train`` registers it too (the scan misses an editable install's
mapped folder)."""

from finetune.training.search.sweeper import SearchSweeper as _SearchSweeper


class SearchSweeper(_SearchSweeper):
    """``finetune.training.search.sweeper.SearchSweeper`` under the name Hydra instantiates."""
