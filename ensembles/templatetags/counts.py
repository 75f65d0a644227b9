"""Template filters for member counts of any size.

Django's ``intcomma``, ``pluralize`` and ``floatformat`` convert to float, which
overflows past ~1.8e308 (200 parameters of ``range(0, 10**12)`` make 10^2400
members: a 500), and ``str`` refuses ints of more than 4300 digits. These use
integer arithmetic only (see ``ensembles.expansion.count_parts``)::

    {% load counts %}
    {{ n|count }} member{{ n|count_plural }}   ->  1,234 members / 10<sup>2400</sup> members
    data-count="{{ n|exact_count }}"           ->  every digit

A value that is not a whole number is shown as it is (like Django's filters).
"""

from django import template
from django.utils.html import format_html

from ..expansion import count_parts, exact_count as _exact_count

register = template.Library()


def _whole(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@register.filter
def count(value):
    """``1,234`` exactly below 10^21; beyond, ``10<sup>2400</sup>`` or ``≈ 1.23 × 10<sup>2400</sup>``."""
    n = _whole(value)
    if n is None:
        return value
    prefix, mantissa, exponent = count_parts(n)
    if exponent is None:
        return mantissa
    if mantissa == "1":
        return format_html("{}10<sup>{}</sup>", prefix, exponent)
    return format_html("{}{} × 10<sup>{}</sup>", prefix, mantissa, exponent)


@register.filter
def count_plural(value, suffixes="s"):
    """Like ``pluralize`` (``"s"`` or ``"y,ies"``), compared as an int: no float overflow."""
    singular, _, plural = suffixes.rpartition(",") if "," in suffixes else ("", "", suffixes)
    return singular if _whole(value) == 1 else plural


@register.filter
def exact_count(value):
    """All the digits, for machine-readable attributes (the short form beyond 4000 digits)."""
    n = _whole(value)
    return value if n is None else _exact_count(n)
