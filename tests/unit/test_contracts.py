"""Contracts: every declared actor name has an actor, on its declared queue; payloads evolve."""

from dramatiq.brokers.stub import StubBroker

from shiftflow import actors
from shiftflow.kernel.contracts import ACTORS, Priority, Queue, StepPayload, TriggerPayload, decode, encode
from shiftflow.kernel.definition import STEP_ACTORS


def test_every_declared_name_has_an_actor_and_back():
    assert set(actors.registered()) == set(ACTORS)


def test_actors_are_declared_on_their_contract_queues():
    broker = StubBroker()
    declared = actors.declare(broker)
    for name, actor in declared.items():
        assert actor.queue_name == ACTORS[name].queue
        assert ACTORS[name].queue in Queue.ALL
    broker.close()


def test_every_step_type_maps_to_a_declared_actor():
    assert set(STEP_ACTORS.values()) <= set(ACTORS)


def test_payload_decoding_ignores_new_fields_and_defaults_missing_ones():
    payload = decode(StepPayload, {"execution_id": "e", "step_id": "s", "added_later": 1})
    assert payload == StepPayload("e", "s", 0)
    roundtrip = decode(TriggerPayload, encode(TriggerPayload("w", "k", "webhook", {"a": 1})))
    assert roundtrip.data == {"a": 1} and roundtrip.priority == "NORMAL"


def test_priorities_are_ordered_and_parsed():
    assert Priority.LOW < Priority.NORMAL < Priority.HIGH < Priority.CRITICAL
    assert Priority.parse("critical") is Priority.CRITICAL
    assert Priority.parse(None) is Priority.NORMAL


def test_every_queue_of_every_pool_has_an_actor_consuming_it():
    """A pool whose queue nothing consumes would sit idle while its messages pile up."""
    from pathlib import Path

    import yaml

    pools = yaml.safe_load((Path(__file__).parents[2] / "deploy" / "pools.yaml").read_text())["pools"]
    consumed = {spec.queue for spec in ACTORS.values()}
    idle = {f"{name}:{queue}" for name, pool in pools.items() for queue in pool["queues"] if queue not in consumed}
    assert not idle, f"queues in deploy/pools.yaml that no actor consumes: {sorted(idle)}"
    assert set(Queue.ALL) <= consumed


def test_each_tool_queue_kind_has_its_actor():
    from shiftflow.kernel.tools.base import QUEUE_KINDS

    for kind in QUEUE_KINDS:
        assert ACTORS[Queue.TOOL_ACTORS[kind]].queue == kind
