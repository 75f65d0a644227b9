"""Run settings and batch settings: validation and command lines. Pure Python, no Django.

Stored as JSON; every write goes through ``clean_run_settings`` /
``clean_batch_settings``, which return a normalised copy or raise SpecError
naming the field. Commands are argv lists, never shell strings.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .expansion import format_arg, texts_of

__all__ = [
    "SpecError",
    "clean_batch_settings",
    "clean_run_settings",
    "member_argv",
    "member_env",
]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPTION_NAME = re.compile(r"-{0,2}[A-Za-z0-9][A-Za-z0-9_.-]*")
# Slurm/PBS/LSF walltimes: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_WALLTIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}")


class SpecError(ValueError):
    """A settings value is invalid. ``field`` names the offending key."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _text(settings: Mapping, key: str, default: str = "") -> str:
    value = settings.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise SpecError(key, "must be text")
    if "\x00" in value:
        raise SpecError(key, "must not contain NUL characters")
    return value.strip()


def _str_list(settings: Mapping, key: str) -> list[str]:
    value = settings.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(key, "must be a list of text arguments")
    if any("\x00" in v for v in value):
        raise SpecError(key, "must not contain NUL characters")
    return list(value)


def _options(settings: Mapping, key: str) -> dict[str, str | None]:
    """Options such as run_args / batch_args: name -> text value, or None for a bare flag."""
    value = settings.get(key) or {}
    if not isinstance(value, Mapping):
        raise SpecError(key, "must map option names to values")
    cleaned: dict[str, str | None] = {}
    for name, option in value.items():
        if not isinstance(name, str) or not _OPTION_NAME.fullmatch(name):
            raise SpecError(key, f"{name!r} is not a valid option name (letters, digits, _ . -)")
        if option is not None and not isinstance(option, (str, int, float)):
            raise SpecError(key, f"option {name!r} must have a text or number value, or none")
        cleaned[name] = None if option is None else str(option)
    return cleaned


def clean_run_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate run settings: exe, exe_args, env_vars, run_command, run_args."""
    if settings is None:
        settings = {}
    if not isinstance(settings, Mapping):
        raise SpecError("run_settings", "must be an object")
    unknown = set(settings) - {"exe", "exe_args", "env_vars", "run_command", "run_args"}
    if unknown:
        raise SpecError("run_settings", f"unknown key(s): {', '.join(sorted(unknown))}")
    exe = _text(settings, "exe")
    if not exe:
        raise SpecError("exe", "an executable is required (a program name on PATH or an absolute path)")
    env = settings.get("env_vars") or {}
    if not isinstance(env, Mapping):
        raise SpecError("env_vars", "must map variable names to values")
    env_vars = {}
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise SpecError("env_vars", f"{name!r} is not a valid environment variable name")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise SpecError("env_vars", f"{name} must have a text or number value")
        env_vars[name] = "" if value is None else str(value)
    return {
        "exe": exe,
        "exe_args": _str_list(settings, "exe_args"),
        "env_vars": env_vars,
        "run_command": _text(settings, "run_command"),
        "run_args": _options(settings, "run_args"),
    }


def clean_batch_settings(settings: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validate batch settings: nodes, time, account, queue, batch_args. Empty -> None."""
    if not settings:
        return None
    if not isinstance(settings, Mapping):
        raise SpecError("batch_settings", "must be an object")
    unknown = set(settings) - {"nodes", "time", "account", "queue", "batch_args"}
    if unknown:
        raise SpecError("batch_settings", f"unknown key(s): {', '.join(sorted(unknown))}")
    nodes = settings.get("nodes")
    if nodes in ("", None):
        nodes = None
    elif isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise SpecError("nodes", "must be a whole number of at least 1")
    time = _text(settings, "time")
    if time and not _WALLTIME.fullmatch(time):
        raise SpecError("time", "use a walltime such as 30, 1:30:00 or 2-00:00:00")
    cleaned = {
        "nodes": nodes,
        "time": time,
        "account": _text(settings, "account"),
        "queue": _text(settings, "queue"),
        "batch_args": _options(settings, "batch_args"),
    }
    if not any(cleaned.values()):
        return None
    return cleaned


def member_argv(
    run_settings: Mapping[str, Any],
    params: Mapping[str, Any],
    params_as_args: Sequence[str] = (),
    texts: Mapping[str, str] | None = None,
) -> list[str]:
    """The member's command: [run_command, *run_args] + [exe, *exe_args, *params_as_args].

    Parameters are written as typed (``true``, ``1e-3``): ``texts``, else the ``text``
    of a Params (ensembles.expansion), else the value's ``str``."""
    argv: list[str] = []
    if run_settings.get("run_command"):
        argv.append(run_settings["run_command"])
        for name, value in (run_settings.get("run_args") or {}).items():
            argv.extend(format_arg(name, value))
    argv.append(run_settings["exe"])
    argv.extend(run_settings.get("exe_args") or [])
    written = texts_of(params, texts) if params_as_args else {}
    for name in params_as_args:
        argv.extend(format_arg(name, written[name]))
    return argv


def member_env(
    run_settings: Mapping[str, Any],
    member_name: str,
    *,
    key_prefixing: bool,
    incoming: Sequence[str] = (),
    db_address: str | None = None,
) -> dict[str, str]:
    """Environment added for a member: its env_vars plus SmartSim's SSKEYOUT / SSKEYIN / SSDB."""
    env = dict(run_settings.get("env_vars") or {})
    if key_prefixing:
        env["SSKEYOUT"] = member_name
    if incoming:
        env["SSKEYIN"] = ",".join(incoming)
    if db_address:
        env["SSDB"] = db_address
        env["SR_DB_TYPE"] = "Standalone"
    return env
