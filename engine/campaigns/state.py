"""The campaign's names: every state a row of the database can be in, with one definition each.

The database stores these values; the Python modules bind them as SQL parameters (or build
SQL from them), and the annotation page receives them with `/api/me` (`served_names`), so
no module spells a state itself. An image's life: planned (listed, not decoded yet) ->
queued -> leased -> done, or back to queued (lease expired, image skipped), or set_aside
(skipped by `queue.max_image_skips` annotators); error when it cannot be used (decoding or
its prefill failed). Stage-2 images are queued like the others but leasable only once
prefilled (`engine.campaigns.queue`).
"""

from __future__ import annotations

import re
from enum import Enum, IntEnum
from typing import Any


class StoredName(str, Enum):
    """A name as the database stores it: equal to, formatted as and bound as its value
    (enum.StrEnum's behaviour, which Python 3.10 lacks)."""

    def __str__(self) -> str:
        return str(self.value)


class ImageStatus(StoredName):
    PLANNED = "planned"
    QUEUED = "queued"
    LEASED = "leased"
    DONE = "done"
    ERROR = "error"
    SET_ASIDE = "set_aside"


class MaskOrigin(StoredName):
    MANUAL = "manual"  # made by an annotator
    PREFILLED = "prefilled"  # proposed by the stage-2 prefill job or taken from a dataset


class MaskState(StoredName):
    ACCEPTED = "accepted"  # manual, current
    DELETED = "deleted"  # manual, deleted by its annotator
    PROPOSED = "proposed"  # prefilled, its image not finished yet
    KEPT = "kept"  # prefilled, not rejected when its image was finished
    REJECTED = "rejected"  # prefilled, rejected by an annotator
    CORRECTED = "corrected"  # prefilled, replaced by the manual mask whose `corrects` names it


class Stage(IntEnum):
    """The data engine's stages as the images table stores them; `config_name` is how
    `campaign create stage=` and `campaign set-stage stage=` name them."""

    ASSISTED = 1  # assisted-manual
    SEMI = 2  # semi-automatic: prefilled masks first

    def __str__(self) -> str:
        return str(self.value)

    @property
    def config_name(self) -> str:
        return STAGE_CONFIG_NAMES[self]


STAGE_CONFIG_NAMES = {Stage.ASSISTED: "manual", Stage.SEMI: "semi"}


def stage_named(name: str) -> Stage:
    """The stage a config calls `name` ("manual" or "semi"); ValueError for another name."""
    for stage, config_name in STAGE_CONFIG_NAMES.items():
        if config_name == name:
            return stage
    raise ValueError(f"stage must be one of {', '.join(STAGE_CONFIG_NAMES.values())}, got {name!r}")


class RoundStatus(StoredName):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class EventKind(StoredName):
    LEASE = "lease"
    LEASE_EXPIRED = "lease_expired"
    SKIP_OBJECT = "skip_object"
    SKIP_IMAGE = "skip_image"
    FINISH_IMAGE = "finish_image"
    DELETE_MASK = "delete_mask"
    REJECT_PREFILLED = "reject_prefilled"


class ClientAction(StoredName):
    """What a client id names (one action each, `engine.campaigns.actions`): a mask
    submission, or the request that recorded an event of the same name."""

    SUBMIT_MASK = "submit_mask"
    SKIP_OBJECT = EventKind.SKIP_OBJECT.value
    SKIP_IMAGE = EventKind.SKIP_IMAGE.value
    FINISH_IMAGE = EventKind.FINISH_IMAGE.value
    REJECT_PREFILLED = EventKind.REJECT_PREFILLED.value
    ANSWER_PROPOSED = "answer_proposed"  # a review's one-key answer (audit, verify)
    CORRECT_PROPOSED = "correct_proposed"  # an audit's corrected version of a proposed mask


class Verdict(StoredName):
    """A review's answer on a proposed (prefilled) mask (audit and verify modes)."""

    KEEP = "keep"  # right as it is (verify: accepted)
    CORRECT = "correct"  # audit: replaced by the reviewer's corrected mask
    REJECT = "reject"  # wrong, or not an object


class CampaignMode(StoredName):
    """What the people of a campaign do (`campaign.yaml`'s `mode`; the page follows it)."""

    ANNOTATE = "annotate"  # stages 1 and 2: make masks (prefilled ones are locked)
    AUDIT = "audit"  # keep, correct or reject each proposed mask; add the missing ones
    VERIFY = "verify"  # one key per proposed mask: accept or reject


def mode_named(name: str) -> CampaignMode:
    """The mode a config calls `name`; ValueError for another name."""
    try:
        return CampaignMode(name)
    except ValueError:
        known = ", ".join(m.value for m in CampaignMode)
        raise ValueError(f"mode must be one of {known}, got {name!r}") from None


class Role(StoredName):
    ANNOTATOR = "annotator"  # sees only the images leased to them
    ADMIN = "admin"  # also statistics, and every image


SERVED = (
    ImageStatus,
    MaskOrigin,
    MaskState,
    Stage,
    RoundStatus,
    EventKind,
    Role,
    Verdict,
    CampaignMode,
)


def served_names() -> dict[str, dict[str, Any]]:
    """The names for the page: {"mask_origin": {"MANUAL": "manual", ...}, "stage":
    {"ASSISTED": 1, "SEMI": 2}, ...}, each group named after its class in snake case."""
    return {_snake(names.__name__): {m.name: m.value for m in names} for names in SERVED}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
