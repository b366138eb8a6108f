"""The soak script (`python3 -m bench.soak`): its judgement on synthetic samples (a leak is
caught, a plateau passes), and one short real run end to end — both sidecars sampled, every
kind of traffic served, nothing lost, nothing left running. The 3- and 7-minute runs whose
figures the READMEs quote are in bench/results/."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from bench.soak import judge

ROOT = Path(__file__).resolve().parent.parent


def samples(rss_kb_at, fds_at, seconds: int = 300, step: int = 5) -> list[dict[str, float]]:
    return [
        {"t": t, "sidecar": "web", "rss_kb": rss_kb_at(t), "fds": fds_at(t)}
        for t in range(0, seconds + 1, step)
    ]


def test_a_plateau_after_the_warm_up_is_flat():
    rows = samples(lambda t: 40_000 + min(t, 60) * 50 + (t % 3) * 100, lambda t: 66)
    flat, text = judge(rows, "web", warmup=60)
    assert flat, text
    assert text.startswith("web: flat after the 60 s warm-up")


def test_a_steady_leak_or_growing_descriptors_is_not_flat():
    leak = samples(lambda t: 40_000 + t * 60, lambda t: 66)  # 3.5 MiB a minute
    flat, text = judge(leak, "web", warmup=60)
    assert not flat and "NOT flat" in text
    fds = samples(lambda t: 40_000, lambda t: 66 + t // 30)  # a descriptor every 30 s
    assert not judge(fds, "web", warmup=60)[0]
    assert not judge(leak[:3], "web", warmup=0)[0], "too few samples is no verdict"


def test_a_short_soak_runs_end_to_end(tmp_path):
    out = tmp_path / "soak"
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration", "4", "--interval", "0.5",
         "--warmup", "1.5", "--rate", "20", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    summary = (out / "summary.txt").read_text()
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-2000:]}"
    assert "nothing lost" in summary
    with open(out / "soak.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["sidecar"] for r in rows} == {"backend", "web"}
    assert all(int(r["rss_kb"]) > 0 and int(r["fds"]) > 0 for r in rows)
    last = rows[-1]
    for kind in ("tcp", "http"):
        assert int(last[f"{kind}_ok"]) > 0 and int(last[f"{kind}_errors"]) == 0, last
