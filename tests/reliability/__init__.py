"""Reliability tests: faults injected into real processes, judged by a Jepsen-style checker.

The harness of the tests on the shared servers, one concept per module:

* ``outside_service``: ``OutsideService``, a real HTTP server standing for the outside
  world, recording every call.
* ``worker_pool``: ``WorkerPool``, ``shiftflow workers`` in a session of its own, killed
  and restarted as a whole.
* ``trigger_publisher``: ``Publisher``, confirmed ``triggers.start`` publishes.
* ``workflows``: the workflow definitions the tests run, ``create_workflow``.
* ``waiting``: ``wait_terminal`` and ``statuses``, read from PostgreSQL.
* ``rig``: ``Rig`` (one test's service, publisher and pools) and ``run_beside_poison``.
* ``checker``: the verdict per accepted key.

The fault scenarios (``test_faults.py``) run on servers of their own: ``services``,
``stack``, ``processes``, ``sender``, ``counting``, ``scenarios`` and ``fault_checker``.
"""
