"""Plotly figure dicts built from selector data; testable without a browser."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .expansion import ParameterSpace, format_count

MAX_SCATTER_POINTS = 1000


def parameter_scatter(space: ParameterSpace, names: list[str], max_points: int = MAX_SCATTER_POINTS) -> dict:
    """The points of 2 or 3 numeric parameters; a fixed random sample of big spaces
    (a stride would only show the slowest-varying parameter of an all_perm space)."""
    total = space.size
    if total <= max_points:
        indexes = range(total)
    else:  # a fixed random sample; randrange works for spaces beyond sys.maxsize
        generator, chosen = random.Random(0), set()
        while len(chosen) < max_points:
            chosen.add(generator.randrange(total))
        indexes = sorted(chosen)
    columns = {name: [] for name in names}
    for index in indexes:
        member = space[index]
        for name in names:
            columns[name].append(member[name])
    title = f"{len(indexes):,} of {format_count(total)} members" if total > max_points else f"{format_count(total)} members"
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


STATUS_COLOURS = {
    "New": "#90a4ae",
    "Queued": "#42a5f5",
    "Running": "#ffb300",
    "Completed": "#43a047",
    "Failed": "#e53935",
    "Cancelled": "#8e24aa",
    "Lost": "#6d4c41",
}
LAYOUT = {"margin": {"l": 60, "r": 10, "t": 36, "b": 40}, "height": 300, "legend": {"orientation": "h"}}


def _layout(title: str, **extra) -> dict:
    return {**LAYOUT, "title": {"text": title, "font": {"size": 13}}, **extra}


STATUS_MAX_POINTS = 300


@dataclass(frozen=True)
class StatusSamples:
    """Members per status after each sampled status event: what ``status_over_time`` draws.
    ``times``: epochs; ``counts``: one {status: members} per time. The selectors compute it
    in the database (selectors.status_samples), ``status_samples`` here from the events."""

    times: list[float] = field(default_factory=list)
    counts: list[dict[str, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.times)


def sample_step(event_count: int, max_points: int = STATUS_MAX_POINTS) -> int:
    """Every how many events a point is drawn (and after the last one)."""
    return max(1, event_count // max_points)


def status_samples(events: list[tuple[int, str, float]], max_points: int = STATUS_MAX_POINTS) -> StatusSamples:
    """The reference: ``events`` (member, status, epoch) in time order, replayed in Python."""
    current: dict[int, str] = {}
    counts = {status: 0 for status in STATUS_COLOURS}
    samples = StatusSamples()
    step = sample_step(len(events), max_points)
    for index, (member, status, at) in enumerate(events):
        previous = current.get(member)
        if previous:
            counts[previous] -= 1
        current[member] = status
        counts[status] += 1
        if index % step == 0 or index == len(events) - 1:
            samples.times.append(at)
            samples.counts.append(dict(counts))
    return samples


def status_over_time(events: StatusSamples | list[tuple[int, str, float]], start: float, max_points: int = STATUS_MAX_POINTS) -> dict:
    """How many members were in each status over time: ``events`` already sampled
    (StatusSamples), or (member, status, epoch) in time order."""
    samples = events if isinstance(events, StatusSamples) else status_samples(events, max_points)
    times = [round(at - start, 3) for at in samples.times]
    series = {name: [counts.get(name, 0) for counts in samples.counts] for name in STATUS_COLOURS}
    data = [
        {"type": "scatter", "mode": "lines", "line": {"shape": "hv", "color": STATUS_COLOURS[name]}, "name": name, "x": times, "y": values}
        for name, values in series.items()
        if any(values)
    ]
    return {"data": data, "layout": _layout("Members by status", xaxis={"title": {"text": "seconds since launch"}})}


def timeline(members: list[dict], start: float) -> dict:
    """A Gantt chart: one bar per member from start to end (or now, if running)."""
    data = []
    for status, colour in STATUS_COLOURS.items():
        rows = [m for m in members if m["status"] == status and m["started"] is not None]
        if not rows:
            continue
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": status,
                "marker": {"color": colour},
                "y": [m["name"] for m in rows],
                "base": [round(m["started"] - start, 3) for m in rows],
                "x": [round(max(m["ended"] - m["started"], 0.001), 3) for m in rows],
                "customdata": [m["url"] for m in rows],
                "hovertemplate": "%{y}: %{x:.2f} s<extra></extra>",
            }
        )
    height = max(300, min(1200, 14 * len(members) + 80))
    return {
        "data": data,
        "layout": _layout(
            "Member timeline", height=height, barmode="overlay", xaxis={"title": {"text": "seconds since launch"}},
            yaxis={"autorange": "reversed", "showticklabels": len(members) <= 60},
        ),
    }


def runtime_histogram(members: list[dict]) -> dict:
    data = []
    for status in ("Completed", "Failed", "Cancelled"):
        runtimes = [m["ended"] - m["started"] for m in members if m["status"] == status and m["started"] and m["ended"]]
        if runtimes:
            data.append({"type": "histogram", "name": status, "x": runtimes, "marker": {"color": STATUS_COLOURS[status]}, "opacity": 0.8})
    return {"data": data, "layout": _layout("Runtime", barmode="overlay", xaxis={"title": {"text": "seconds"}})}


def parameter_vs_result(members: list[dict], x: str, y: str) -> dict:
    """A scatter of two numeric fields (params or results), each point linking to its member."""
    points = [m for m in members if _number(m["values"].get(x)) and _number(m["values"].get(y))]
    trace = {
        "type": "scatter",
        "mode": "markers",
        "x": [m["values"][x] for m in points],
        "y": [m["values"][y] for m in points],
        "text": [m["name"] for m in points],
        "customdata": [m["url"] for m in points],
        "marker": {"size": 9, "color": [STATUS_COLOURS[m["status"]] for m in points]},
        "hovertemplate": "%{text}<br>" + x + "=%{x}<br>" + y + "=%{y}<extra></extra>",
    }
    return {
        "data": [trace],
        "layout": _layout(f"{y} against {x}", xaxis={"title": {"text": x}}, yaxis={"title": {"text": y}}),
    }


def parallel_coordinates(members: list[dict], fields: list[str]) -> dict:
    rows = [m for m in members if all(_number(m["values"].get(f)) for f in fields)]
    dimensions = [{"label": f, "values": [m["values"][f] for m in rows]} for f in fields]
    return {
        "data": [{"type": "parcoords", "dimensions": dimensions, "line": {"color": "#1e88e5"}}],
        "layout": _layout("Parameters and results", margin={"l": 60, "r": 60, "t": 60, "b": 30}),
    }


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
