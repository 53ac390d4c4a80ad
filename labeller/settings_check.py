"""Checks on ``labeller.toml`` before a project opens: one clear line per problem, all at once.

A wrong value used to surface later as a crash for everyone (a lease of 0 s on the Label page, a string
where a number belongs) or as silent damage (a heartbeat timeout below the worker's heartbeat period
fails healthy jobs; an audit fraction of 7). Types come from the settings dataclasses' defaults, so a
new setting is type-checked without a line here; the ranges that matter are listed in ``_RULES``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath
from typing import Any

# Positive; each worker also refuses a timeout under three of its own heartbeat periods (labeller.worker),
# since the period is a worker option (5 s by default), not a project setting.
MIN_HEARTBEAT_TIMEOUT_SECONDS = 1
MIN_CLAIM_LEASE_SECONDS = 10
MAX_CLAIM_LEASE_SECONDS = 7 * 24 * 3600


def _names(name: str) -> Callable[[], tuple[str, ...]]:
    """A tuple of names from core.registry (torch-free), read when a check runs."""

    def names() -> tuple[str, ...]:
        from core import registry

        return tuple(getattr(registry, name))

    return names


def _limit(name: str) -> int:
    """A bound from core.registry (torch-free), read when a check runs."""
    from core import registry

    return int(getattr(registry, name))


def _device_problem(value: Any) -> str | None:
    from core.registry import device_problem

    return device_problem(value)


def _auto_or_at_least(low: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value == "auto":
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"must be auto or a number, got {value!r}"
        return None if value >= low else f"must be auto or at least {low}, got {value}"

    return check


def _zero_or_between(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value == 0 or low <= value <= high else f"must be 0 (auto) or {low}-{high}, got {value}"

    return check


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda value: None if value >= low else f"must be at least {low}, got {value}"


def _between(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda value: None if low <= value <= high else f"must be between {low} and {high}, got {value}"


def _one_of(choices: Callable[[], tuple[str, ...]]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        names = choices()
        return None if value in names else f"must be one of {', '.join(names)}; got {value!r}"

    return check


def _string_list(what: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
            return f"must be a list of {what} (non-empty strings), got {value!r}"
        return None

    return check


def _import_roots(value: Any) -> str | None:
    if problem := _string_list("absolute folder paths")(value):
        return problem
    for root in value:
        if not PurePosixPath(root).is_absolute():
            return f"must hold absolute folder paths, got {root!r}"
        if PurePosixPath(root) == PurePosixPath("/"):
            # Every file the server can read, which import_roots exists to prevent.
            return "must not include / (the whole file system): name the folders images come from"
    return None


_RULES: dict[tuple[str, str], Callable[[Any], str | None]] = {
    ("labelling", "default_strategy"): _one_of(_names("STRATEGIES")),
    ("training", "model"): _one_of(_names("MODEL_CHOICES")),
    ("training", "backbone"): _one_of(lambda: ("auto", *_names("INPUT_KINDS")())),
    ("training", "feature_view"): _one_of(lambda: ("centre", "centre_flip")),
    ("training", "image_size"): _zero_or_between(4, 1024),
    ("training", "channels"): lambda value: None if value in (0, 1, 3) else f"must be 0 (auto), 1 or 3, got {value}",
    ("labelling", "claim_lease_seconds"): _between(MIN_CLAIM_LEASE_SECONDS, MAX_CLAIM_LEASE_SECONDS),
    ("labelling", "audit_fraction"): _between(0, 1),
    ("labelling", "round_size"): _between(1, 1000),
    ("labelling", "break_reminder_minutes"): _at_least(0),
    ("labelling", "daily_exposure_limit"): _at_least(0),
    ("training", "epochs"): lambda value: _between(1, _limit("MAX_EPOCHS"))(value),
    ("training", "batch_size"): lambda value: _between(1, _limit("MAX_BATCH_SIZE"))(value),
    ("training", "classifier"): _one_of(lambda: ("auto", *_names("CLASSIFIER_KINDS")())),
    ("training", "device"): lambda value: _device_problem(value),
    ("training", "auto_retrain_every"): _at_least(0),
    ("training", "consistency"): _at_least(0),
    ("training", "balance"): _auto_or_at_least(0),
    ("access", "admins"): _string_list("e-mail addresses"),
    ("access", "annotators"): _string_list("e-mail addresses"),
    ("access", "import_roots"): _import_roots,
    ("training", "heartbeat_timeout_seconds"): lambda value: (
        None
        if value >= MIN_HEARTBEAT_TIMEOUT_SECONDS
        else f"must be at least {MIN_HEARTBEAT_TIMEOUT_SECONDS}, got {value}"
    ),
}


_AUTO_OR_NUMBER = {("training", "balance")}


def _type_problem(value: Any, default: Any) -> str | None:
    """None if ``value`` fits the type of ``default``; TOML gives bool, int, float, str, tables, arrays."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if isinstance(default, int):
        whole = isinstance(value, int) and not isinstance(value, bool)
        return None if whole else f"must be a whole number, got {value!r}"
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, got {value!r}"
        return None if math.isfinite(value) else f"must be a finite number, got {value!r}"
    if isinstance(default, str):
        return None if isinstance(value, str) else f"must be a string, got {value!r}"
    return None


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def settings_problems(data: Mapping[str, Any], sections: Mapping[str, type]) -> list[str]:
    """Every problem in the parsed ``labeller.toml``, one line each, naming the setting (``[section] key``)."""
    problems: list[str] = []
    known_top = {"name", "database_url", *sections}
    for key in data:
        if key not in known_top:
            problems.append(f"unknown setting {key!r} (known: {', '.join(sorted(known_top))})")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append("name must be a non-empty string")
    if "database_url" in data and not isinstance(data["database_url"], str):
        problems.append(f"database_url must be a string, got {data['database_url']!r}")
    for section, settings_type in sections.items():
        values = data.get(section, {})
        if not isinstance(values, Mapping):
            problems.append(f"[{section}] must be a table, got {values!r}")
            continue
        fields = {field.name: field for field in dataclasses.fields(settings_type)}  # type: ignore[arg-type]
        for key, value in values.items():
            where = f"[{section}] {key}"
            if key not in fields:
                problems.append(f"{where}: unknown setting (known: {', '.join(fields)})")
                continue
            # Settings that take "auto" or a number are typed by their rule alone.
            typed_by_rule = (section, key) in _AUTO_OR_NUMBER
            problem = None if typed_by_rule else _type_problem(value, _default(fields[key]))
            if problem is None and (rule := _RULES.get((section, key))) is not None:
                problem = rule(value)
            if problem is not None:
                problems.append(f"{where} {problem}")
    return problems
