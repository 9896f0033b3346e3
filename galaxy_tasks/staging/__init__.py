"""Destinations that share no filesystem with the submitter (docs/staging.md): a job's
inputs travel to the worker before it starts, and its outputs come back before its end is
recorded. `settings` is the job_conf's `staging:` block, `runner` the runner behind staging,
one module per transfer (`rsync`, `http`), and the
http transfer's submitter side (`server`) and its per-job tokens (`tokens`)."""
