"""Point this process's Celery app at another Redis for a while (the worker and the
monitor get theirs from REDIS_URL in their environment)."""

from contextlib import contextmanager


def _use(app, broker_url: str, result_backend: str) -> None:
    from kombu import pools

    if app._pool is not None:
        app._pool.force_close_all()
    pools.reset()  # kombu's registry of producer pools, by connection, would hand back the closed ones
    app.conf.broker_url, app.conf.result_backend = broker_url, result_backend
    # Connections, producers and the result store are kept per app (or thread): start afresh.
    app._pool = None
    app.amqp._producer_pool = None
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


@contextmanager
def celery_redis(url: str):
    """Celery's broker and result store at ``url`` inside the block."""
    from webapp.celery import app

    before = app.conf.broker_url, app.conf.result_backend
    _use(app, url, url)
    try:
        yield
    finally:
        _use(app, *before)
