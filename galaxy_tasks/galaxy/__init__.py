"""Galaxy's side of galaxy-tasks: a Galaxy job runner plugin.

Galaxy loads it from job_conf.yml (`load: galaxy_tasks.galaxy.runner:GalaxyTasksJobRunner`).
Only `runner` imports Galaxy; the rest (the spec mapping, the settings, the task client,
the events consumer) is plain Python, so this package imports and is tested without Galaxy.
The plugin speaks to galaxy-tasks only through the public task contract (task names and
JSON), never through galaxy-tasks' own Celery app.
"""
