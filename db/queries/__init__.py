"""Queries as functions, one module per area. Every function takes the caller's ``Session`` (one session
per unit of work, opened with ``db.engine.unit_of_work``) and never commits on its own."""
