"""Annotators and their tokens. A token is shown once when made; only its SHA-256 is
stored. Admins (role admin) see statistics and export; annotators see only their lease."""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from dataclasses import dataclass

from engine.campaigns.campaign import Campaign, CampaignError
from engine.campaigns.db import now
from engine.campaigns.errors import Unauthorized
from engine.campaigns.state import Role

ANNOTATOR, ADMIN = Role.ANNOTATOR, Role.ADMIN  # the names callers import from here
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class Annotator:
    annotator_id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_annotator(campaign: Campaign, name: str, *, role: str = Role.ANNOTATOR) -> str:
    """Register an annotator (or admin); returns their token, which is not stored."""
    if not NAME_PATTERN.match(name):
        raise CampaignError(
            f"annotator name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-'"
        )
    if role not in tuple(Role):
        raise CampaignError(f"role must be {' or '.join(Role)}, got {role!r}")
    token = secrets.token_urlsafe(32)
    try:
        with campaign.db.write() as db:
            db.execute(
                "INSERT INTO annotators (name, role, token_sha256, created) VALUES (?, ?, ?, ?)",
                (name, role, token_digest(token), now()),
            )
    except sqlite3.IntegrityError as error:
        raise CampaignError(f"an annotator named {name!r} exists already") from error
    return token


def authenticate(campaign: Campaign, authorization: str | None) -> Annotator:
    """The annotator of an `Authorization: Bearer <token>` header."""
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("missing token (Authorization: Bearer <token>)")
    digest = token_digest(authorization[len("Bearer ") :].strip())
    row = (
        campaign.db.connection()
        .execute(
            "SELECT annotator_id, name, role FROM annotators WHERE token_sha256 = ?", (digest,)
        )
        .fetchone()
    )
    if row is None:
        raise Unauthorized("unknown token")
    return Annotator(annotator_id=row["annotator_id"], name=row["name"], role=row["role"])


def count_annotators(db: sqlite3.Connection, role: Role) -> int:
    row = db.execute("SELECT COUNT(*) FROM annotators WHERE role = ?", (role,)).fetchone()
    return int(row[0])
