"""Minimal parameter-tree helpers (nested dicts, lists and tuples of arrays).

The networks keep their parameters as plain nested containers so that they are JAX
pytrees as they stand and PyTorch leaf tensors can be listed in a fixed order.
"""

from __future__ import annotations

__all__ = ["tree_leaves", "tree_map", "tree_unflatten"]


def tree_map(fn, tree, *rest):
    """Apply ``fn`` leaf-wise to ``tree`` (and the same-shaped trees ``rest``).

    Example:
        >>> tree_map(lambda a, b: a + b, {"w": [1, 2]}, {"w": [10, 20]})
        {'w': [11, 22]}
    """
    if isinstance(tree, dict):
        return {k: tree_map(fn, tree[k], *[r[k] for r in rest]) for k in tree}
    if isinstance(tree, list | tuple):
        return type(tree)(tree_map(fn, t, *[r[i] for r in rest]) for i, t in enumerate(tree))
    return fn(tree, *rest)


def tree_leaves(tree) -> list:
    """The leaves of ``tree`` in a fixed (depth-first, key-sorted-as-built) order.

    Example:
        >>> tree_leaves({"a": [1, 2], "b": 3})
        [1, 2, 3]
    """
    if isinstance(tree, dict):
        return [leaf for k in tree for leaf in tree_leaves(tree[k])]
    if isinstance(tree, list | tuple):
        return [leaf for t in tree for leaf in tree_leaves(t)]
    return [tree]


def tree_unflatten(tree, leaves):
    """A tree shaped like ``tree`` whose leaves are ``leaves`` (in :func:`tree_leaves` order).

    Example:
        >>> tree_unflatten({"a": [0, 0], "b": 0}, [1, 2, 3])
        {'a': [1, 2], 'b': 3}
    """
    it = iter(leaves)
    return tree_map(lambda _: next(it), tree)
