"""Garbage collection around the start and the end of a short-lived ``etl-assets`` process.

Why: a run's process imports Dagster and builds the Definitions (some 1,000 modules and millions of
objects, nearly all alive until the end), and Python's collector walks that whole heap over and over
while it grows, then once more while the interpreter shuts down. None of it is garbage. Measured on a
whole ``etl-assets run`` of one table (`etl-assets bench --only process`): about a third of the
process's time. So the console script

* pauses the collector while a ``run`` starts (:func:`pause_collection`), and the runner resumes it
  once the Definitions and the Dagster instance are ready (:func:`resume_collection`), moving what
  exists then to the permanent generation (``gc.freeze``): the run's own garbage is still collected,
  the startup heap is never walked again;
* freezes the heap before the interpreter exits (:func:`skip_final_collection`): the objects are
  freed with the process, not walked one last time. Exit handlers still run; only the collector's
  last pass is skipped.

Only the console script and ``python -m etl_assets.cli`` do this; a caller of ``cli.main`` or
``runner.run`` inside its own process (a test, a notebook) keeps its collector as it is.
"""

from __future__ import annotations

import gc


def pause_collection() -> None:
    gc.disable()


def resume_collection() -> None:
    """Resume a paused collector with the heap built so far frozen; nothing when it was not paused."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def skip_final_collection() -> None:
    gc.freeze()
