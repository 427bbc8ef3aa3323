"""The service's expected failures, free of HTTP: operations raise these, and one place
(errors.py) maps each kind to its status code, so the layers below the routes never speak HTTP.

The message is the whole answer a person gets: say what to change.
"""

from __future__ import annotations


class Problem(Exception):
    """An expected failure of a request; ``str(exc)`` is the message for the client."""

    status = 400
    headers: dict[str, str] | None = None


class InvalidInput(Problem):
    """A parameter or value is wrong (422)."""

    status = 422


class NotSupported(Problem):
    """The model cannot do what was asked, or the request asks the wrong kind of thing (400)."""

    status = 400


class ModelNotFound(Problem):
    """No served model has that name (404)."""

    status = 404


class TooManyRequests(Problem):
    """This client already has as many expensive requests running as it may (429)."""

    status = 429
    headers = {"Retry-After": "1"}  # noqa: RUF012  # read-only


class TimedOut(Problem):
    """The request's deadline passed before its work finished; that work was stopped (504)."""

    status = 504


class StillLoading(Problem):
    """The models are loading; retry shortly (503 with Retry-After)."""

    status = 503
    headers = {"Retry-After": "1"}  # noqa: RUF012  # read-only
