"""Every scenario the harness knows, in the order a full run measures them."""

from __future__ import annotations

from bench.scenarios import TCP_SCENARIOS, Scenario
from bench.scenarios_l7 import L7_SCENARIOS

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (*TCP_SCENARIOS, *L7_SCENARIOS)}
