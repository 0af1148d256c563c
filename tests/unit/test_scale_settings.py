"""Settings for running at scale: several broker URLs, the queue type, a direct database URL."""

import pytest

from shiftflow.kernel.broker import QUORUM_DELIVERY_LIMIT, ShiftflowRabbitmqBroker, queue_arguments
from shiftflow.kernel.confirm_publisher import ConfirmPublisher, queue_declarations
from shiftflow.kernel.errors import SettingsError
from shiftflow.kernel.settings import Settings

REAL = {
    "SHIFTFLOW_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "SHIFTFLOW_DATABASE_URL": "postgresql://postgres@127.0.0.1:6432/shiftflow",
    "SHIFTFLOW_MONGO_URL": "mongodb://127.0.0.1:27017/?retryWrites=false",
}
NODES = "amqp://u:s3cret@rabbit-0:5672/sf, amqp://u:s3cret@rabbit-1:5672/sf,amqp://u:s3cret@rabbit-2:5672/sf"


def test_one_broker_url_is_a_list_of_one() -> None:
    settings = Settings.from_env(REAL)
    assert settings.amqp_urls == (REAL["SHIFTFLOW_AMQP_URL"],)
    assert settings.amqp_url == REAL["SHIFTFLOW_AMQP_URL"]


def test_several_broker_urls_are_kept_in_order_and_the_first_is_amqp_url() -> None:
    settings = Settings.from_env({**REAL, "SHIFTFLOW_AMQP_URL": NODES})
    assert [u.split("@")[1] for u in settings.amqp_urls] == ["rabbit-0:5672/sf", "rabbit-1:5672/sf", "rabbit-2:5672/sf"]
    assert settings.amqp_url == settings.amqp_urls[0]
    shown = settings.public_dict()
    assert "s3cret" not in repr(shown) and len(shown["amqp_fallback_urls"]) == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("amqp://a/,,amqp://b/", "SHIFTFLOW_AMQP_URL has an empty entry"),
        ("amqp://a/,http://b/", "SHIFTFLOW_AMQP_URL='http://b/' is malformed"),
    ],
)
def test_a_bad_broker_url_list_names_the_variable(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("?", r"\?")):
        Settings.from_env({**REAL, "SHIFTFLOW_AMQP_URL": value})


def test_queue_type_is_classic_by_default_and_checked() -> None:
    assert Settings.from_env(REAL).queue_type == "classic"
    assert Settings.from_env({**REAL, "SHIFTFLOW_QUEUE_TYPE": "quorum"}).queue_type == "quorum"
    with pytest.raises(SettingsError, match="SHIFTFLOW_QUEUE_TYPE='stream' is malformed"):
        Settings.from_env({**REAL, "SHIFTFLOW_QUEUE_TYPE": "stream"})


def test_migrations_use_the_direct_url_when_set() -> None:
    assert Settings.from_env(REAL).migration_database_url == REAL["SHIFTFLOW_DATABASE_URL"]
    direct = "postgresql://postgres@127.0.0.1:5432/shiftflow"
    assert Settings.from_env({**REAL, "SHIFTFLOW_DATABASE_DIRECT_URL": direct}).migration_database_url == direct
    with pytest.raises(SettingsError, match="SHIFTFLOW_DATABASE_DIRECT_URL"):
        Settings.from_env({**REAL, "SHIFTFLOW_DATABASE_DIRECT_URL": "mysql://x/"})


def test_quorum_declarations_are_consistent_between_broker_and_publisher() -> None:
    broker = ShiftflowRabbitmqBroker(url="amqp://127.0.0.1:1/", queue_type="quorum", max_lengths={"triggers": 9})
    declared = dict(queue_declarations("triggers", 9, "quorum"))
    assert broker._build_queue_arguments("triggers") == declared["triggers.DQ"]
    assert declared["triggers"] == queue_arguments("triggers", 9, "quorum")
    assert declared["triggers"]["x-max-length"] == 9 and "x-max-length" not in declared["triggers.DQ"]
    for name, arguments in declared.items():
        assert arguments["x-queue-type"] == "quorum", name
        assert "x-max-priority" not in arguments, name
    assert declared["triggers"]["x-delivery-limit"] == QUORUM_DELIVERY_LIMIT
    # Above the highest SHIFTFLOW_DELIVERY_LIMIT plus the delivery that quarantines.
    with pytest.raises(SettingsError):
        Settings.from_env({**REAL, "SHIFTFLOW_DELIVERY_LIMIT": str(QUORUM_DELIVERY_LIMIT - 1)})
    assert Settings.from_env({**REAL, "SHIFTFLOW_DELIVERY_LIMIT": "1000"}).delivery_limit + 1 < QUORUM_DELIVERY_LIMIT


def test_classic_declarations_keep_priorities() -> None:
    declared = dict(queue_declarations("steps"))
    assert declared["steps"]["x-max-priority"] == declared["steps.DQ"]["x-max-priority"] == 10
    assert "x-queue-type" not in declared["steps"] and "x-queue-type" not in declared["steps.XQ"]


def test_the_publisher_takes_several_addresses_and_refuses_none() -> None:
    publisher = ConfirmPublisher(["amqp://a:1/", "amqp://b:2/"])
    assert [(p.host, p.port, p.connection_attempts) for p in publisher._addresses] == [("a", 1, 1), ("b", 2, 1)]
    with pytest.raises(ValueError, match="at least one"):
        ConfirmPublisher([])


@pytest.mark.parametrize(("queue_type", "reconnects"), [("quorum", True), ("classic", False)])
def test_a_nack_on_quorum_queues_reopens_the_connection(queue_type: str, reconnects: bool) -> None:
    """On a 3-node RabbitMQ 3.10 cluster, a channel that published while its quorum queue's
    leader was killed was nacked for minutes after the new leader was up (10,549 nacks in
    60 s; docs/scaling.md); a fresh connection was acked at once. So a nack on quorum
    queues reopens the connection; on classic queues a nack means "queue full" only."""
    import asyncio
    import types

    import pika.spec

    from shiftflow.kernel.errors import QueueFull

    async def main() -> tuple[BaseException | None, bool]:
        publisher = ConfirmPublisher("amqp://127.0.0.1:1/", queue_type=queue_type)
        publisher._slots, publisher._lost = asyncio.Semaphore(1), asyncio.Event()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        publisher._pending[1] = (future, "m1")
        nack = types.SimpleNamespace(method=pika.spec.Basic.Nack(delivery_tag=1, multiple=False))
        publisher._on_confirm(nack)
        return future.exception(), publisher._lost.is_set()

    error, lost = asyncio.run(main())
    assert isinstance(error, QueueFull)
    assert lost is reconnects
