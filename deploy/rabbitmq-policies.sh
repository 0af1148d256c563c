#!/usr/bin/env bash
# Queue policies ShiftFlow expects on RabbitMQ older than 3.12 (run once per vhost, as an
# administrator on the broker host): ShiftFlow's queues in lazy mode, so that a backlog
# (workers down, a burst of webhooks) goes to disk instead of memory: a backlog held in
# memory stalls the ingress's publisher confirms (docs/benchmarks.md#rabbitmq-queue-mode).
# RabbitMQ >= 3.12 classic queues always behave this way and ignore the setting, and
# quorum queues (SHIFTFLOW_QUEUE_TYPE=quorum) keep their messages on disk anyway: the
# policy does nothing to them, and a deployment of quorum queues can skip this script.
# Queues keep the arguments Dramatiq declares them with: a policy changes no argument,
# so workers, the ingress and the scheduler need no restart.
#
# TRIGGER_MAX_LENGTH (optional): bound the `triggers` queue with a policy instead of its
# queue argument, for a deployment whose queue exists without one and runs with
# SHIFTFLOW_TRIGGER_QUEUE_MAX_LENGTH=0 (README: "Quotas and the bounded trigger queue").
# Only one policy applies to a queue, so this one repeats the lazy mode.
#
# Usage: VHOST=/shiftflow [TRIGGER_MAX_LENGTH=100000] deploy/rabbitmq-policies.sh
set -euo pipefail
vhost="${VHOST:-/}"
pattern='^(triggers|steps|tools|tools\.browser|tools\.media|tools\.email|llm|sideshift)(\.DQ|\.XQ)?$'
rabbitmqctl set_policy -p "$vhost" --apply-to queues --priority 0 \
  shiftflow-lazy "$pattern" '{"queue-mode":"lazy"}'
if [ -n "${TRIGGER_MAX_LENGTH:-}" ]; then
  rabbitmqctl set_policy -p "$vhost" --apply-to queues --priority 1 shiftflow-triggers '^triggers$' \
    "{\"queue-mode\":\"lazy\",\"max-length\":${TRIGGER_MAX_LENGTH},\"overflow\":\"reject-publish\"}"
fi
rabbitmqctl list_policies -p "$vhost"
