import copy
import pickle

from hypothesis import given, settings, strategies as st

from passes.unionfind import UnionFind


def reference_partition(n, pairs):
    """Sets by flooding an adjacency list: independent of any union-find."""
    adj = {i: set() for i in range(n)}
    for a, b in pairs:
        adj[a].add(b)
        adj[b].add(a)
    seen, parts = set(), []
    for i in range(n):
        if i in seen:
            continue
        stack, part = [i], set()
        while stack:
            j = stack.pop()
            if j not in part:
                part.add(j)
                stack.extend(adj[j] - part)
        seen |= part
        parts.append(frozenset(part))
    return set(parts)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=80))))
def test_union_find_matches_a_flood_fill_partition(case):
    n, pairs = case
    uf = UnionFind()
    uf.add(n // 2)
    uf.add(n - n // 2)  # ids from several add() calls form one id space
    for a, b in pairs:
        root = uf.union(a, b)
        assert uf.find(a) == uf.find(b) == root
    parts = {}
    for i in range(n):
        parts.setdefault(uf.find(i), set()).add(i)
    assert {frozenset(p) for p in parts.values()} == reference_partition(n, pairs)
    assert all(uf.find(r) == r for r in parts)  # a root is its own root
    assert len(uf) == n
    assert uf.roots().tolist() == [uf.find(i) for i in range(n)]
    batched = UnionFind()
    batched.add(n)
    batched.union_all([a for a, _ in pairs], [b for _, b in pairs])
    assert [batched.find(i) == batched.find(j) for i in range(n) for j in range(n)] == \
        [uf.find(i) == uf.find(j) for i in range(n) for j in range(n)]


def test_copies_keep_their_own_state():
    uf = UnionFind()
    uf.add(3)
    uf.union(0, 1)
    for twin in (copy.deepcopy(uf), pickle.loads(pickle.dumps(uf))):
        twin.union(1, 2)
        assert twin.find(2) == twin.find(0)
        assert uf.find(2) != uf.find(0)
