"""Errors of campaigns: `CampaignError` for what a command cannot do, and the errors of
requests, each with the HTTP status the API answers with."""

from __future__ import annotations


class CampaignError(ValueError):
    """A campaign that cannot do what was asked (one-line message for the user)."""


class RequestError(Exception):
    """A request the campaign refuses; `status` is its HTTP status code."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(RequestError):
    status = 422


class Unauthorized(RequestError):
    status = 401


class Forbidden(RequestError):
    status = 403


class NotFound(RequestError):
    status = 404


class Conflict(RequestError):
    """An expired lease, an embedding not computed yet: try again or lease anew."""

    status = 409
