"""One study, many workers: the sampler and pruner a config names, the budget (exactly ``n_trials``), and the
next trial a worker takes.

Budget: a study has used every trial it holds except the failed ones that were re-queued (their retry is a
trial of its own), so a trial whose worker died is never counted twice. A worker takes a re-queued (WAITING)
trial first, else a new one while the budget lasts; counting and asking happen under the study's lock.

Seeding: the sampler that suggests trial ``n`` is seeded ``seed + n``, so two workers never propose the
same parameters from the same sampler state, and the same seed gives the same trials run after run.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from finetune.run.errors import ConfigError

if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler
    from optuna.study import Study
    from optuna.trial import FrozenTrial, Trial

PRUNER_ATTR = "finetune:pruner"  # the study's pruner, as configured: trials build the same one
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler"}  # kind -> optuna.samplers class
PRUNERS = {"median": "MedianPruner", "hyperband": "HyperbandPruner", "none": "NopPruner"}  # kind -> optuna.pruners


def _build(section: str, kinds: dict[str, str], module: Any, spec: dict[str, Any]) -> Any:
    """``hydra.sweeper.<section>`` (``kind`` and keyword arguments) as an Optuna object. The section holds the keys
    of several kinds (the defaults are median's and tpe's): the chosen class gets the ones its signature takes;
    a key no kind takes is refused."""
    import inspect

    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in kinds:
        raise ConfigError(
            f"hydra.sweeper.{section}.kind={kind}: not a {section} of the search; choose one of {', '.join(kinds)}"
        )
    takes = {name: set(inspect.signature(getattr(module, cls)).parameters) for name, cls in kinds.items()}
    unknown = sorted(set(spec) - set().union(*takes.values()))
    if unknown:
        keys = sorted(set().union(*takes.values()))
        raise ConfigError(
            f"hydra.sweeper.{section}.{unknown[0]}: no {section} takes this key; the keys besides kind: "
            + ", ".join(keys)
        )
    cls = getattr(module, kinds[kind])
    try:
        return cls(**{k: v for k, v in spec.items() if k in takes[kind]})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"hydra.sweeper.{section} ({kind}): {err}") from None


def make_sampler(spec: dict[str, Any], seed_offset: int = 0) -> BaseSampler:
    """The sampler of ``spec`` (``kind: tpe|random``, ``seed``, …), its seed moved by ``seed_offset``."""
    import optuna

    spec = dict(spec)
    if spec.get("seed") is not None:
        spec["seed"] = int(spec["seed"]) + seed_offset
    return _build("sampler", SAMPLERS, optuna.samplers, spec)


def make_pruner(spec: dict[str, Any]) -> BasePruner:
    """The pruner of ``spec`` (``kind: median|hyperband|none`` and its arguments)."""
    import optuna

    return _build("pruner", PRUNERS, optuna.pruners, spec)


def retried(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the failed trials that were re-queued (each retry lists its predecessors)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def used(trials: list[FrozenTrial]) -> int:
    """Trials that count against ``n_trials``: all but the failed ones that were re-queued."""
    return len(trials) - len(retried(trials))


def next_trial(study: Study, n_trials: int, sampler: dict[str, Any]) -> Trial | None:
    """Under the study's lock: a re-queued trial, else a new one seeded by its number while the budget lasts;
    None when every trial of the budget is taken."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    waiting = [t.number for t in trials if t.state == TrialState.WAITING]
    if not waiting and used(trials) >= n_trials:
        return None
    # the trial ask() returns: the first WAITING one (its free parameters are sampled too), else a new one,
    # numbered len(trials) (trial numbers count up from 0 in a study)
    number = waiting[0] if waiting else len(trials)
    study.sampler = make_sampler(sampler, seed_offset=number)
    with warnings.catch_warnings():  # the sweeper beats for its trials itself (Optuna's note assumes optimize())
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()


def open_study(
    storage: Any, name: str, direction: str, sampler: dict[str, Any], pruner: dict[str, Any], shown: str
) -> Study:
    """Create the study or join it (the same name in the same storage); its pruner is recorded in the study
    (the trials build it from there). A study that optimises the other way is refused."""
    import optuna

    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=direction,
        sampler=make_sampler(sampler),
        pruner=make_pruner(pruner),
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"hydra.sweeper.study_name={name}: the study in {shown} optimises the other way "
            f"({study.direction.name.lower()}, this search {direction}); choose another study_name or sweep dir"
        )
    if PRUNER_ATTR not in study.user_attrs:
        study.set_user_attr(PRUNER_ATTR, dict(pruner))
    return study


def study_pruner(study: Study) -> BasePruner:
    """The pruner the study was created with (the first worker's config)."""
    return make_pruner(study.user_attrs.get(PRUNER_ATTR) or {"kind": "none"})


def best_trial(study: Study) -> FrozenTrial | None:
    """The study's best COMPLETE trial; None before one completed."""
    try:
        return study.best_trial
    except ValueError:
        return None
