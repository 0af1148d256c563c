"""The capacity model reads what the engine benchmark measured (``--figures-out``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import capacity
from bench.bench_engine import Phase, write_figures


def _phase(workers: float, postgres: float, commits: float) -> Phase:
    return Phase(cpu={"workers": workers, "postgres": postgres, "rabbitmq": 1.5, "mongo": 2.0, "echo": 9.0},
                 pg={"xact_commit": commits})


def test_benchmark_figures_feed_the_capacity_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    write_figures(out, "outside", {"sf": _phase(7.25, 3.5, 6.0), "dq": _phase(5.0, 1.0, 3.0)},
                  {"sf": 700}, {"sf": 100})
    write_figures(out, "fanout", {"sf": _phase(80.0, 30.0, 40.0)}, {"sf": 500}, {"sf": 10})

    given = capacity.read_figures(str(out))
    workloads = capacity.load_figures(given)
    assert workloads["outside"].workers == 7.25 and workloads["outside"].postgres == 3.5
    assert workloads["outside"].commits == 6.0 and workloads["outside"].documents == 7.0
    assert workloads["fanout"].workers == 80.0 and workloads["fanout"].documents == 50.0
    # What the run did not measure keeps the defaults (the busiest queue's share).
    assert workloads["outside"].busiest_queue == capacity.DEFAULTS["outside"].busiest_queue
    assert "echo" not in given["outside"]
    assert capacity.load_baselines(given)["outside"]["workers"] == 5.0

    capsys.readouterr()
    assert capacity.main(["--figures", str(out), "--rates", "1000", "--workloads", "outside"]) == 0
    printed = capsys.readouterr().out
    assert "workers 7.25, postgres 3.5" in printed
    # 1,000/s x 7.25 ms at 70 % busy: 10.4 worker cores.
    assert "10.4" in printed
    assert "workers 1.4x" in printed  # 7.25 / 5.0, against the run's own bare Dramatiq


def test_a_broken_figures_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(SystemExit, match="bad.json: expected an object"):
        capacity.main(["--figures", str(bad)])
