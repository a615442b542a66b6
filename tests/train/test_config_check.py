"""``changes`` treats a newly added field absent from an older run's config as its default;
``data_seed`` is checked and resolved."""

import pytest

from lowprec.train import config_check
from lowprec.train.config_check import ADDED_DEFAULTS, ConfigError, changes
from tests.train.test_train import smoke


def without(config: dict, key: str) -> dict:
    """``config`` less the (dotted) field ``key``."""
    head, _, rest = key.partition(".")
    if rest:
        return {**config, head: without(config[head], rest)}
    return {k: v for k, v in config.items() if k != key}


def get(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def with_value(config: dict, key: str, value) -> dict:
    """``config`` with the (dotted) field ``key`` set to ``value``."""
    head, _, rest = key.partition(".")
    return {**config, head: with_value(config[head], rest, value) if rest else value}


@pytest.mark.parametrize("field", sorted(ADDED_DEFAULTS))
def test_an_added_field_absent_from_the_old_config_is_its_default(field):
    new = config_check.run_config(smoke())
    assert get(new, field) == ADDED_DEFAULTS[field]
    old = without(new, field)  # a run recorded before the field existed
    assert changes(old, new) == {} and changes(new, old) == {}
    default = ADDED_DEFAULTS[field]
    changed = (default + ["x"] if isinstance(default, list) else default + "x" if isinstance(default, str)
               else default + 7)
    other = with_value(new, field, changed)
    assert changes(old, other) == {field: (default, changed)}
    assert changes(other, old) == {field: (changed, default)}


def test_other_absent_fields_are_still_changes():
    new = config_check.run_config(smoke())
    assert changes(without(new, "seed"), new) == {"seed": ("<absent>", 0)}


def test_data_seed_resolves_to_seed_by_default_and_is_checked():
    assert config_check.data_seed(smoke(seed=3)) == 3
    assert config_check.data_seed(smoke(seed=3, data_seed=0)) == 0
    for bad in (-2, -10):  # ml_collections itself refuses a non-integer here
        with pytest.raises(ConfigError, match=r"data_seed must be an integer >= 0, or -1 \(the same as seed\)"):
            config_check.check(smoke(data_seed=bad), 1)
