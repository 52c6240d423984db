"""The chosen task groups as a Markdown summary (``groups.md`` of ``manytask group``)."""

from __future__ import annotations

from .search import Grouping


def groups_markdown(
    grouping: Grouping, kind: str, baselines: dict[str, Grouping] | None = None
) -> str:
    """The chosen groups, each task's predicted gain and the search cost, as Markdown."""
    lines = [
        f"# Task groups from the {kind} affinity (budget {grouping.budget})",
        "",
        "| model | tasks | serves |",
        "|---|---|---|",
    ]
    for g, members in enumerate(grouping.groups):
        served = [t for t, s in grouping.serving.items() if s == g]
        lines.append(f"| {g + 1} | {', '.join(members)} | {', '.join(served) or '-'} |")
    lines += ["", "| task | predicted gain (affinity onto it) |", "|---|---|"]
    lines += [f"| {t} | {v:+.4g} |" for t, v in grouping.gains.items()]
    lines += [
        "",
        f"Predicted score (sum over tasks): **{grouping.score:+.4g}** "
        f"(mean {grouping.mean_gain:+.4g}).",
        f"Search: {grouping.method}, {grouping.evaluated} candidates evaluated in "
        f"{grouping.seconds * 1e3:.1f} ms"
        + (
            f"; tasks allowed in several groups: {', '.join(grouping.overlap)}"
            if grouping.overlap
            else "; no task in two groups"
        )
        + ".",
    ]
    if baselines:
        lines += ["", "| reference grouping | predicted score |", "|---|---|"]
        lines += [f"| {name} | {g.score:+.4g} |" for name, g in baselines.items()]
    return "\n".join(lines) + "\n"
