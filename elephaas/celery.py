"""The Celery application: tasks are discovered in the herds and instances apps."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "elephaas.settings")

app = Celery("elephaas")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="elephaas.ping")
def ping(payload: str) -> dict:
    """Round trip through the broker and a worker; used by the lab's health check and tests."""
    import socket

    from instances.jobs.runner import worker_id

    return {
        "payload": payload,
        "worker_pid": os.getpid(),
        "hostname": socket.gethostname(),
        "worker_id": worker_id(),
    }
