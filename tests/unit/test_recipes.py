"""Every recipe composes with the real config groups (as ``python -m finetune +<group>=<name>``)."""

from __future__ import annotations

import pytest

from finetune.commands.precheck import check_config
from finetune.resources import recipes_dir

from ..conftest import compose_config

RECIPES = sorted(p for p in recipes_dir().glob("*/*.yaml"))


def test_recipes_exist_for_classification_and_medical_imaging():
    groups = {p.parent.name for p in RECIPES}
    assert {"classification", "medical"} <= groups


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_composes_and_validates(recipe):
    cfg = compose_config(f"+{recipe.parent.name}={recipe.stem}")
    assert "schedule" not in cfg.get(recipe.parent.name, {}), "recipe must be a global package (# @package _global_)"
    phases = check_config(cfg)
    assert phases and all(p.epochs >= 1 for p in phases)
