"""The peers' side of the benchmark: Celery, Dramatiq and RQ apps and the driver that measures them.

These modules import celery / dramatiq / rq, so they run only in the bench-only venv
(`bench/.peers-venv`, made by `bench.peers_env`), never in taskherd's.
Every app reads its Redis from the environment variable BENCH_REDIS_URL.
"""
