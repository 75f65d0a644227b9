"""Server -> browser pushes. One fragment, three transports: the partials rendered
here are the same the run page includes and the htmx views return."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.template.loader import render_to_string
from django.urls import reverse

from . import selectors

log = logging.getLogger("flotilla.realtime")
MAX_ROWS_PER_PUSH = 200  # beyond this, the page reloads its table instead


def run_group(run_id: int) -> str:
    return f"run.{run_id}"


def run_update_html(run_id: int, member_ids: list[int], *, reload: bool = False) -> str:
    """One websocket message: counts and progress, plus the changed rows (or an order
    to reload the table). Rows travel inside a <template>, where an HTML parser keeps
    <tr> elements; static/js/app.js hands such messages to htmx's own swap."""
    context = {"oob": True, **selectors.run_summary(run_id)}
    if not reload and len(member_ids) <= MAX_ROWS_PER_PUSH:
        context["rows"] = selectors.member_rows(run_id, member_ids)
    else:
        context["reload_url"] = reverse("ensembles:run_members", args=[run_id])
    return render_to_string("ensembles/partials/run_update.html", context)


def run_changed(run_id: int, member_ids: list[int]) -> None:
    """Push one update to every browser watching the run (best effort: the page
    shows the truth again on reconnect)."""
    try:
        html = run_update_html(run_id, member_ids)
        async_to_sync(get_channel_layer().group_send)(run_group(run_id), {"type": "run.update", "html": html})
    except Exception as error:  # Redis down, a page closing: never fail the caller for a push
        log.warning("could not push run %s: %s", run_id, error)
