"""A small union-find over integer ids, kept fully compressed so ``find`` is one list lookup.

Channel analysis calls ``find`` about ten times per ``union`` (every channel of every member
when groups are built), so ``find`` is the call to make cheap: every id points straight at its
root, and ``union`` relabels the smaller set (each id moves at most log2(n) times).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np


class UnionFind:
    """
    >>> uf = UnionFind(); a, b, c = uf.add(3)
    >>> _ = uf.union(a, c)
    >>> uf.find(c) == uf.find(a), uf.find(b) == uf.find(a)
    (True, False)
    >>> uf.union_all([b], [a]); uf.roots().tolist()
    [0, 0, 0]
    """

    def __init__(self) -> None:
        self.parent: list[int] = []               # id -> its root (always the root itself)
        self.members: dict[int, list[int]] = {}   # root -> its ids, for roots of 2+ ids only
        # ``find`` is the list's own lookup: a builtin call instead of a Python frame
        self.find = self.parent.__getitem__

    def add(self, n: int = 1) -> range:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return range(start, start + n)

    def union(self, a: int, b: int) -> int:
        parent, members = self.parent, self.members
        ra, rb = parent[a], parent[b]
        if ra == rb:
            return ra
        big, small = members.get(ra), members.get(rb)
        if small is not None and (big is None or len(big) < len(small)):
            ra, rb, big, small = rb, ra, small, big  # relabel the smaller set
        if big is None:
            big = members[ra] = [ra]
        if small is None:  # a single id: the common case, tying two fresh channels
            parent[rb] = ra
            big.append(rb)
            return ra
        for i in small:
            parent[i] = ra
        big.extend(small)
        del members[rb]
        return ra

    def union_all(self, a: Iterable[int], b: Iterable[int]) -> None:
        """Unite ``a[k]`` with ``b[k]`` for every k (tying two channel spaces)."""
        parent, union = self.parent, self.union
        for x, y in zip(a, b):
            if parent[x] != parent[y]:
                union(x, y)

    def roots(self) -> np.ndarray:
        """Every id's root, as an array indexed by id (for vectorised lookups)."""
        return np.array(self.parent, dtype=np.int64)

    def __getstate__(self) -> tuple:
        return self.parent, self.members

    def __setstate__(self, state: tuple) -> None:  # copies must look up their own list
        self.parent, self.members = state
        self.find = self.parent.__getitem__

    def __len__(self) -> int:
        return len(self.parent)
