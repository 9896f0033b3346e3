"""Workflows as objects: a named DAG of job specs whose steps may map over lists, parameter
grids or random seeds, and reduce over what a mapped step produced (docs/workflows.md).

`document` parses and checks a workflow before anything is written; `schedule` turns the
elements whose inputs exist into jobs, driven by the ends of jobs; `control` pauses,
resumes, cancels and reruns a workflow.
"""
