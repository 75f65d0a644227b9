"""Plotly figure dicts built from selector data; testable without a browser."""

from __future__ import annotations

import random

from .expansion import ParameterSpace

MAX_SCATTER_POINTS = 1000


def parameter_scatter(space: ParameterSpace, names: list[str], max_points: int = MAX_SCATTER_POINTS) -> dict:
    """The points of 2 or 3 numeric parameters; a fixed random sample of big spaces
    (a stride would only show the slowest-varying parameter of an all_perm space)."""
    total = len(space)
    indexes = range(total) if total <= max_points else sorted(random.Random(0).sample(range(total), max_points))
    columns = {name: [] for name in names}
    for index in indexes:
        member = space[index]
        for name in names:
            columns[name].append(member[name])
    title = f"{len(indexes):,} of {total:,} members" if total > max_points else f"{total:,} members"
    marker = {"size": 5 if len(names) == 3 else 7, "opacity": 0.8, "color": "#1e88e5"}
    hover = [f"member {i}" for i in indexes]
    if len(names) == 2:
        x, y = names
        trace = {"type": "scatter", "mode": "markers", "x": columns[x], "y": columns[y], "text": hover, "marker": marker}
        axes = {"xaxis": {"title": {"text": x}}, "yaxis": {"title": {"text": y}}}
    else:
        x, y, z = names
        trace = {
            "type": "scatter3d",
            "mode": "markers",
            "x": columns[x],
            "y": columns[y],
            "z": columns[z],
            "text": hover,
            "marker": marker,
        }
        axes = {"scene": {"xaxis": {"title": {"text": x}}, "yaxis": {"title": {"text": y}}, "zaxis": {"title": {"text": z}}}}
    layout = {
        "title": {"text": title, "font": {"size": 13}},
        "margin": {"l": 50, "r": 10, "t": 36, "b": 40},
        "height": 320,
        **axes,
    }
    return {"data": [trace], "layout": layout}
