"""The pool-sizing formula of ``shiftflow pools plan`` and the service time it reads."""

from __future__ import annotations

from shiftflow.cli.pools import service_seconds
from shiftflow.consumers.pool_plan import QueueLoad, plan_pool
from shiftflow.consumers.pools import Pool
from shiftflow.consumers.queue_exporter import QueueState


def test_littles_law_plus_draining_the_backlog() -> None:
    pool = Pool("core", ("triggers", "steps"), processes=2, threads=8)
    loads = {"triggers": QueueLoad(10.0, 0, 0.1), "steps": QueueLoad(20.0, 600, 0.5)}
    plan = plan_pool(pool, loads, target_age=60, utilisation=0.5)
    # busy: 10*0.1 + 20*0.5 = 11 threads; drain: 600*0.5/60 = 5 threads; /0.5 = 32 threads
    assert plan.threads_needed == 32
    assert plan.processes == 4 and plan.change == "more"
    assert plan.queue_length_per_replica == int(4 * 8 * 60 / 0.5)  # 4 processes x 8 threads, 60 s at 0.5 s


def test_an_idle_pool_keeps_one_process() -> None:
    plan = plan_pool(Pool("llm", ("llm",), processes=3, threads=4), {"llm": QueueLoad(0, 0, 2.0)}, target_age=30)
    assert (plan.processes, plan.change) == (1, "fewer")


def test_exactly_enough_threads_is_no_change() -> None:
    plan = plan_pool(Pool("p", ("tools",), processes=2, threads=5), {"tools": QueueLoad(7.0, 0, 1.0)},
                     target_age=30, utilisation=0.7)
    assert plan.threads_needed == 10 and (plan.processes, plan.change) == (2, "keep")


def test_service_seconds_from_a_pools_histogram() -> None:
    text = """# HELP shiftflow_message_duration_seconds Time spent processing one message.
# TYPE shiftflow_message_duration_seconds histogram
shiftflow_message_duration_seconds_bucket{actor="a",le="+Inf",queue="steps"} 4.0
shiftflow_message_duration_seconds_count{actor="a",queue="steps"} 4.0
shiftflow_message_duration_seconds_sum{actor="a",queue="steps"} 2.0
shiftflow_message_duration_seconds_bucket{actor="b",le="+Inf",queue="steps"} 1.0
shiftflow_message_duration_seconds_count{actor="b",queue="steps"} 1.0
shiftflow_message_duration_seconds_sum{actor="b",queue="steps"} 3.0
shiftflow_message_duration_seconds_count{actor="c",queue="llm"} 0.0
shiftflow_message_duration_seconds_sum{actor="c",queue="llm"} 0.0
"""
    assert service_seconds(text) == {"steps": 1.0}


def test_the_oldest_age_comes_from_the_published_counters_history() -> None:
    state = QueueState()
    state.observe(100.0, 5, 0, 0, 5, 0)  # 5 arrived by t=100
    state.observe(110.0, 10, 0, 0, 10, 0)  # 5 more by t=110
    state.observe(115.0, 7, 0, 0, 10, 3)  # 3 of the first left: the oldest waiting is number 4
    assert state.oldest_age(120.0) == 20.0
    state.observe(116.0, 4, 0, 0, 10, 6)  # the first five are gone: the oldest is number 6
    assert state.oldest_age(120.0) == 10.0
    state.observe(117.0, 0, 0, 0, 10, 10)
    assert state.oldest_age(120.0) == 0.0
    state.observe(118.0, 2, 0, 0, 2, 0)  # the queue was re-created: its history starts over
    assert state.oldest_age(120.0) == 2.0
