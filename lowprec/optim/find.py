"""Finding one wrapper's state inside a nested optimizer state (for logging and evaluation)."""

from __future__ import annotations

import jax


def find_state(opt_state, state_type: type):
    """The single ``state_type`` NamedTuple inside ``opt_state`` (wrappers and chains nest).

    Raises when there is none or more than one, naming the type.
    """
    found = []

    def visit(node) -> bool:
        if isinstance(node, state_type):
            found.append(node)
        return False  # keep descending: a state may hold another of its kind

    jax.tree.leaves(opt_state, is_leaf=visit)
    if len(found) != 1:
        raise ValueError(f"expected exactly one {state_type.__name__} in the optimizer state; found {len(found)}")
    return found[0]
