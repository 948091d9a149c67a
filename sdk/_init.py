"""``stride.init``: the one entry point that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ._names import random_id, random_name
from ._run import _MODES, Run
from ._settings import Settings
from .errors import UsageError, check_identifier


def init(
    project: str = "uncategorized",
    *,
    entity: str | None = None,
    name: str | None = None,
    id: str | None = None,
    config: Mapping[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    notes: str | None = None,
    folder: str | None = None,
    mode: str = "online",
    server: str | None = None,
    settings: Settings | None = None,
    running: bool = True,
    capture_output: bool = False,
) -> Run:
    """Start (or join) a run and return it.

    ``entity`` defaults to ``$STRIDE_ENTITY`` or ``"default"``; ``server`` to
    ``$STRIDE_SERVER`` or the embedded default. Passing the ``id`` of an existing
    run, from any process, writes into that run; its steps go on after the largest
    one stored (asked of the service; see ``Settings.resume_timeout_s``).
    ``capture_output=True`` records what the process prints (stdout, stderr) as the
    run's events. ``running=False`` leaves a new run
    ``created`` until :meth:`Run.start` (or :func:`reconnect`, from another process).

    Example::

        import stride

        with stride.init(project="vision", config={"lr": 1e-3}, tags=["baseline"]) as run:
            run.log({"loss": 0.5})
    """
    if mode not in _MODES:
        raise UsageError(f"mode must be one of {', '.join(_MODES)}; got {mode!r}")
    entity = entity or os.environ.get("STRIDE_ENTITY") or "default"
    check_identifier("entity", entity)
    check_identifier("project", project)
    run_id = check_identifier("run id", id) if id is not None else random_id()
    if config is not None and not isinstance(config, Mapping):
        raise UsageError(f"config must be a mapping, got {type(config).__name__}")
    tag_list = None if tags is None else [tags] if isinstance(tags, str) else list(tags)
    if tag_list is not None and not all(isinstance(t, str) and t for t in tag_list):
        raise UsageError(f"tags must be non-empty strings, got {tag_list!r}")
    if settings is None:
        settings = Settings.from_env(server=server)
    elif server is not None:
        raise UsageError("pass either server= or settings=, not both")
    return Run(
        entity=entity,
        project=project,
        run_id=run_id,
        name=name or random_name(),
        config=config or {},
        tags=tag_list,
        notes=notes,
        folder=folder,
        mode=mode,
        settings=settings,
        name_given=name is not None,
        running=running,
        resume=id is not None,
        capture_output=capture_output,
    )


def reconnect(
    run_id: str,
    *,
    project: str = "uncategorized",
    entity: str | None = None,
    server: str | None = None,
    settings: Settings | None = None,
) -> Run:
    """Attach to a run left ``created`` (``init(running=False)``, maybe by another
    process) and start it. Its name, config and tags are kept.

    Example::

        run = stride.reconnect("abc123", project="vision")
        run.log({"loss": 0.5})
        run.finish()
    """
    return init(project, entity=entity, id=run_id, server=server, settings=settings)
