"""The steps of a job's life as plain Python: no Celery here, so each can be called from a
task, the embedded runner or a test alike. Each step's result carries its `effects`
(what must follow: chains to start, jobs to launch, wake or stop, workflow passes) and the
edge's one interpreter sends them: policy lives here, sending there."""
from galaxy_tasks.lifecycle.accept import accept, accept_many, refusal_address
from galaxy_tasks.lifecycle.cancel import Cancelled, cancel
from galaxy_tasks.lifecycle.effects import NOTHING, Effects, ToStop
from galaxy_tasks.lifecycle.finish import Finished, finish, finish_many
from galaxy_tasks.lifecycle.launch import launch
from galaxy_tasks.lifecycle.prepare import launch_for, prepare, prepare_many
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
from galaxy_tasks.lifecycle.turns import (
    Turn,
    Wait,
    launch_all_in_turn,
    launch_in_turn,
    launch_turn,
    load_of,
    next_queued,
    why_waiting,
)

__all__ = ["NOTHING", "Cancelled", "Effects", "Finished", "Plan", "ToStop", "Turn", "Wait", "accept", "accept_many",
           "acquire_lease",
           "cancel", "finish", "finish_many", "held_by", "launch", "launch_all_in_turn", "launch_for",
           "launch_in_turn", "launch_turn", "load_of",
           "next_queued", "overdue", "prepare", "prepare_many", "refusal_address", "startup", "stopped", "tracked",
           "unpublished", "why_waiting"]
