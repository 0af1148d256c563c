"""The baseline of ``bench_llm.py``: a bare Dramatiq actor making the same LLM call.

Run by ``dramatiq bench.llm_baseline_actor``. Each message holds a request body; the actor
POSTs it to the fake provider (httpx, one keep-alive pool per process), decodes the answer,
checks its JSON against the schema, prices it from the same price table (Decimal) and
pushes ``{tokens, cost, valid}`` to a Redis list, which the benchmark counts. No database,
no budget, no records: what a hand-written worker does for the same call.
"""

from __future__ import annotations

import json
import os
from typing import Any

import dramatiq
import httpx
import jsonschema
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from shiftflow.kernel.llm import shipped_prices

broker = RabbitmqBroker(url=os.environ["BENCH_AMQP_URL"])
dramatiq.set_broker(broker)
_client = httpx.Client(timeout=120)
_redis = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
_URL = os.environ["BENCH_LLM_URL"] + "/chat/completions"
_HEADERS = {"Authorization": f"Bearer {os.environ['BENCH_LLM_KEY']}"}
RESULTS = "bench:llm:baseline"
_PRICES = shipped_prices()


@dramatiq.actor(queue_name="bench_llm", max_retries=0)
def call(body: dict[str, Any], schema: dict[str, Any]) -> None:
    """One call: send, decode, validate, price, record."""
    answer = _client.post(_URL, json=body, headers=_HEADERS)
    answer.raise_for_status()
    data = answer.json()
    text = data["choices"][0]["message"]["content"]
    valid = not list(jsonschema.Draft202012Validator(schema).iter_errors(json.loads(text)))
    usage = data["usage"]
    price = _PRICES.cost(data["model"], usage["prompt_tokens"], usage["completion_tokens"])
    _redis.rpush(RESULTS, json.dumps({"in": usage["prompt_tokens"], "out": usage["completion_tokens"],
                                      "cost": str(price), "valid": valid}))
