"""Finding one wrapper's state inside a nested optimizer state (for logging and evaluation)."""

from __future__ import annotations

import optax


def find_state(opt_state, state_type: type):
    """The single ``state_type`` NamedTuple inside ``opt_state`` (wrappers and chains nest).

    Searched by ``optax.tree_utils.tree_get_all_with_path`` (by the type's name, also inside a
    match: a state may hold another of its kind), kept to instances of ``state_type``. Raises
    when there is none or more than one, naming the type (``tree_get`` would return ``None``
    for none and print the whole state for several).
    """
    found = optax.tree_utils.tree_get_all_with_path(
        opt_state, state_type.__name__, filtering=lambda _, value: isinstance(value, state_type))
    if len(found) != 1:
        raise ValueError(f"expected exactly one {state_type.__name__} in the optimizer state; found {len(found)}")
    return found[0][1]
