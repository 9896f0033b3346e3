"""The steps of a job's life as plain Python: no Celery here, so each can be called from a
task, the embedded runner or a test alike. A step returns what must follow (a message to
send, a job to wake) and the tasks layer sends it: policy lives here, sending there."""
from galaxy_tasks.lifecycle.accept import accept
from galaxy_tasks.lifecycle.cancel import Cancelled, ToStop, cancel
from galaxy_tasks.lifecycle.finish import Finished, finish
from galaxy_tasks.lifecycle.launch import launch, next_queued
from galaxy_tasks.lifecycle.prepare import launch_for, prepare
from galaxy_tasks.lifecycle.reconcile import (
    Plan,
    acquire_lease,
    held_by,
    overdue,
    startup,
    stopped,
    tracked,
    unpublished,
)

__all__ = ["Cancelled", "Finished", "Plan", "ToStop", "accept", "acquire_lease", "cancel", "finish", "held_by",
           "launch", "launch_for", "next_queued", "overdue", "prepare", "startup", "stopped", "tracked", "unpublished"]
