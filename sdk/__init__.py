"""Stride SDK: log runs from training code, and query them afterwards.

Logging (never blocks the training loop)::

    import stride

    with stride.init(project="vision", config={"lr": 1e-3}) as run:
        for step in range(1000):
            run.log({"loss": 1 / (step + 1)})

Querying::

    api = stride.Api()  # $STRIDE_API, else http://127.0.0.1:8080
    run = api.run("default/vision/<run id>")
    df = run.history(samples=500)
"""

from ._api import Api, ApiRun, Runs
from ._api_artifacts import ApiArtifact
from ._api_files import ApiFile
from ._api_folders import ApiFolder
from ._artifacts import Artifact
from ._config import NestedDict
from ._init import init, reconnect
from ._run import Run
from ._settings import Settings
from ._transport import DeliveryReport
from .errors import (
    ApiError,
    AuthError,
    BadRequestError,
    NotFoundError,
    ServiceUnavailableError,
    StrideError,
    UsageError,
)

__all__ = [
    "Api",
    "ApiArtifact",
    "ApiError",
    "ApiFile",
    "ApiFolder",
    "ApiRun",
    "Artifact",
    "AuthError",
    "BadRequestError",
    "DeliveryReport",
    "NestedDict",
    "NotFoundError",
    "Run",
    "Runs",
    "ServiceUnavailableError",
    "Settings",
    "StrideError",
    "UsageError",
    "init",
    "reconnect",
]
