"""The search space: ``hydra.sweeper.params`` and the command line's sweep values in Hydra's override
syntax, as Optuna distributions (the mapping hydra-optuna-sweeper used):

- ``choice(a, b, …)`` (or ``a,b``) → categorical; ``shuffle(range(…))`` → categorical;
- ``range(start, stop, step)`` → int from ``start`` to ``stop``, **stop included** (as hydra-optuna-sweeper; a
  grid sweep's ``range`` stops before it); float if any bound is a float;
- ``interval(a, b)`` → uniform float, ``int(interval(a, b))`` → int; ``tag(log, …)`` puts an interval or a
  ``range`` without a step on a log scale.

A command-line value replaces the recipe's entry for its key; a plain value (``backbone.freeze=4``) takes
the key out of the search and sets it in every trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.errors import HydraException

from finetune.run.errors import ConfigError

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.trial import Trial


@dataclass
class SearchSpace:
    """The distributions to sample and the overrides every trial gets as they are."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)  # key=value and ~key overrides, as written

    def suggest(self, trial: Trial) -> dict[str, Any]:
        """The trial's value of every searched key (a re-queued trial gets its earlier values back)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        values = {}
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                values[name] = trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, FloatDistribution):
                values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
            else:
                values[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
        return values

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """A trial's command line: its sampled values, then the fixed overrides."""
        return [f"{name}={value}" for name, value in values.items()] + self.fixed


def parse_space(params: dict[str, Any] | None, arguments: list[str]) -> SearchSpace:
    """The space of ``params`` (``key: sweep``, the recipe's) with the command line's ``arguments`` on top."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except HydraException as err:
        raise ConfigError(f"hydra.sweeper.params: {str(err).splitlines()[0]}") from None
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in parsed:
        key = override.get_key_element()
        if override.is_delete() or not override.is_sweep_override():
            space.pop(key, None)
            fixed[key] = override.input_line or f"{key}={override.get_value_element_as_str()}"
        else:
            fixed.pop(key, None)
            space[key] = distribution(override)
    return SearchSpace(space, list(fixed.values()))


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (``choice``, ``range``, ``interval``, ``tag(log, …)``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key, value, line = override.get_key_element(), override.value(), override.input_line
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if not (override.is_range_sweep() or override.is_interval_sweep()):
        raise ConfigError(
            f"{line}: a search samples choice(…), range(…), interval(a, b) or tag(log, interval(a, b)); "
            f"e.g. {key}=choice(1,2) or {key}=tag(log, interval(1e-4, 1e-1))"
        )
    log = "log" in value.tags
    try:
        if override.is_interval_sweep():  # int(interval(…)) has int bounds
            ints = isinstance(value.start, int) and isinstance(value.end, int)
            return (IntDistribution if ints else FloatDistribution)(value.start, value.end, log=log)
        floats = any(isinstance(x, float) for x in (value.start, value.stop, value.step))
        if log and (floats or value.step != 1):
            raise ConfigError(
                f"{line}: a log scale takes no step: e.g. {key}=tag(log, int(interval(1, 64))) or "
                f"{key}=tag(log, interval(1e-4, 1e-1))"
            )
        if floats:
            return FloatDistribution(float(value.start), float(value.stop), step=float(value.step) or None)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step), log=log)
    except ValueError as err:  # Optuna's checks: low > high, a log scale from 0 …
        raise ConfigError(f"{line}: {err}") from None
