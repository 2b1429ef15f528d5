"""taskherd's benchmark harness (`python -m bench`), side by side with Celery, Dramatiq and RQ."""
