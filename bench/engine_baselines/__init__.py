"""Hand-written baselines for ``bench/bench_engine.py``: the same 3-step workflow on bare
Dramatiq (``dramatiq_app``) and on a Celery chain (``celery_app``).

Both read their connections from ``BENCH_*`` environment variables (``common.py``) so the
worker processes started by the benchmark and the benchmark's own producer agree.
"""
