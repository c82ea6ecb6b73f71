"""Scrape ``/metrics`` of a live process and read samples, with the official parser."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(base_url: str) -> Samples:
    """Every sample of one scrape, by sample name; no credentials (``/metrics`` is public)."""
    async with aiohttp.ClientSession() as http, http.get(base_url + "/metrics") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/plain"
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample of ``name`` whose labels include ``labels``."""
    found = [v for got, v in samples.get(name, []) if _includes(got, labels)]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(name, []) if _includes(got, labels))


def _includes(got: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(got.get(k) == v for k, v in wanted.items())
