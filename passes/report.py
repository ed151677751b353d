"""Human-readable tables of channel groups."""
from __future__ import annotations

from typing import Mapping, Sequence

from .channels import Group


def _short(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit})" if len(names) > limit else "")


def format_groups(groups: Sequence[Group], keep: Mapping[int, Sequence[int]] | None = None) -> str:
    """One row per group: id, width (and kept width), producers, other members, frozen reason."""
    lines = [f"{'id':>3} {'width':>11}  {'producers':<48} {'consumers / norms':<40} frozen"]
    for g in groups:
        if not g.members:  # ids an op without a rule made: nothing to prune, nothing to show
            continue
        width = f"{g.size}" if keep is None or g.id not in keep else f"{g.size}->{len(keep[g.id])}"
        others = [f"{m.module}[{m.kind[0]}]" for m in g.members if m.kind != "producer"]
        lines.append(f"{g.id:>3} {width:>11}  {_short(g.names('producer')):<48} {_short(others, 3):<40} "
                     f"{g.frozen or '-'}")
    n_free = sum(g.prunable for g in groups)
    hidden = sum(not g.members for g in groups)
    lines.append(f"{len(groups)} groups, {n_free} prunable, {len(groups) - n_free} frozen"
                 + (f" ({hidden} without layers not shown)" if hidden else ""))
    return "\n".join(lines)
