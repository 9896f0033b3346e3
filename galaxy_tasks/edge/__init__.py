"""The Celery edge: the only part of galaxy-tasks that knows Celery and the broker.

The application (`app`), the tasks that call the lifecycle, the one interpreter that turns a
step's effects into messages (`messages`), the process's runners (`runtime`), worker signal
hooks, message checks, message signing, broker transports, the event listener and the
embedded wiring. Everything below it (lifecycle, store, runners, routing, spec) is plain
Python and never imports from here.
"""
