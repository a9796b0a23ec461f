"""``hf-adapt serve``: an hf-adapt output in front of users, with their feedback captured for the next version.

Modules: ``config`` (``ServeConfig``), ``models`` (what is served: a classifier or a generating language model,
its name and revision), ``answers`` (what was answered, by id, for feedback later), ``batching`` (dynamic
micro-batching), ``classifier`` / ``completions`` / ``feedback`` (the routes), ``metrics`` (Prometheus), ``app``
(the FastAPI application and its guards) and ``main`` (the command). FastAPI, uvicorn and prometheus-client come
with the ``serve`` extra; nothing here is imported by ``import hf_adapt``.
"""
