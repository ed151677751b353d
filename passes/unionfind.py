"""A small union-find over integer ids (path halving, union by size)."""
from __future__ import annotations


class UnionFind:
    """
    >>> uf = UnionFind(); a, b, c = uf.add(3)
    >>> _ = uf.union(a, c)
    >>> uf.find(c) == uf.find(a), uf.find(b) == uf.find(a)
    (True, False)
    """

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []

    def add(self, n: int = 1) -> range:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.size.extend([1] * n)
        return range(start, start + n)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return ra

    def __len__(self) -> int:
        return len(self.parent)
