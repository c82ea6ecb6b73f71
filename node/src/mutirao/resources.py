"""Resources a task asks for and a worker offers, pure logic shared by both sides.

A task's ``resources`` (``{"cpu": 2, "memory": "4Gi", "gpu": 1, "licence": 1}``) and a
worker's ``--resources gpu=1,memory=16Gi`` use Kubernetes' quantities: plain numbers, binary
suffixes (``Ki Mi Gi Ti Pi``), decimal ones (``k M G T P``) and millis (``500m``). A task asks
for one ``cpu`` unless it says otherwise; a worker offers as many ``cpu`` as it has slots
unless it says otherwise, so by default slots are the only capacity.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from mutirao.errors import ValidationError

Demand = tuple[tuple[str, float], ...]
"""What one task takes: (resource, amount) pairs, sorted by name (hashable: a queue lane)."""

DEFAULT_DEMAND: Demand = (("cpu", 1.0),)

_NAME = re.compile(r"[a-z][a-z0-9_./-]{0,62}")
_QUANTITY = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?")
_SUFFIXES = {
    None: 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}
MAX_AMOUNT = 2.0**80


def quantity(value: object, where: str) -> float:
    """``value`` (a number or a quantity string) as a number; errors name ``where``."""
    if isinstance(value, bool):
        raise ValidationError(
            f"{where}: expected a number or a quantity, got a boolean", field=where
        )
    if isinstance(value, int | float):
        amount = float(value)
    elif isinstance(value, str) and (match := _QUANTITY.fullmatch(value.strip())):
        amount = float(match[1]) * _SUFFIXES[match[2]]
    else:
        raise ValidationError(
            f"{where}: expected a number or a quantity such as 2, 500m or 4Gi, got {value!r}",
            field=where,
        )
    if not (math.isfinite(amount) and 0 <= amount <= MAX_AMOUNT):
        raise ValidationError(f"{where}: must be between 0 and 2**80, got {value!r}", field=where)
    return amount


def _name(name: object, where: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(
            f"{where}: resource names are lowercase letters, digits and . _ / - "
            f"(starting with a letter), got {name!r}",
            field=where,
        )
    return name


_DEMANDS: dict[tuple[tuple[str, type, object], ...], Demand] = {}
"""Demands already parsed (a batch repeats a few), at most 1,024."""


def demand(resources: Mapping[str, object] | None, where: str = "resources") -> Demand:
    """A task's ``resources`` as the demand it places (one cpu unless it names cpu)."""
    if not resources:
        return DEFAULT_DEMAND
    key = tuple((name, type(value), value) for name, value in resources.items())
    found = _DEMANDS.get(key)
    if found is None:
        found = _parse(resources, where)
        if len(_DEMANDS) >= 1024:
            _DEMANDS.clear()
        _DEMANDS[key] = found
    return found


def _parse(resources: Mapping[str, object], where: str) -> Demand:
    amounts = {"cpu": 1.0}
    for name, value in resources.items():
        amounts[_name(name, f"{where}.{name}")] = quantity(value, f"{where}.{name}")
    return tuple(sorted((name, amount) for name, amount in amounts.items() if amount))


def capacity(entries: list[str], slots: int, where: str = "resources") -> dict[str, float]:
    """A worker's ``NAME=QUANTITY`` entries as what it offers (``cpu`` = slots by default)."""
    offered = {"cpu": float(slots)}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep:
            raise ValidationError(f"{where}: expected NAME=QUANTITY, got {entry!r}", field=where)
        offered[_name(name.strip(), where)] = quantity(value.strip(), where)
    return offered


def fits(room: Mapping[str, float], wanted: Demand) -> bool:
    """Whether what is left (``room``) holds ``wanted``."""
    return all(room.get(name, 0.0) >= amount for name, amount in wanted)


def describe(wanted: Demand) -> str:
    """``cpu=2, gpu=1``: a demand as people write it."""
    return ", ".join(f"{name}={_amount(amount)}" for name, amount in wanted)


def _amount(amount: float) -> str:
    return str(int(amount)) if amount.is_integer() else f"{amount:g}"
