"""What the app's pages do, as plain functions over an engine and a project (no Streamlit here).

One module per page plus ``common``. Each function is one unit of work: it opens a session with
``unit_of_work`` (writes) or ``reading`` (reads), calls the query functions in ``db/queries`` and returns
plain dataclasses, so pages stay layout-only and the benchmarks and the tests call exactly the code a key
press runs.
"""
