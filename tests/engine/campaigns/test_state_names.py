"""The campaign's names have one definition (engine/campaigns/state.py): no SQL text of the
campaign modules spells a state, and the page compares with the names the server sends
instead of its own literals."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from engine.campaigns.commands import STATIC_DIR
from engine.campaigns.state import (
    SERVED,
    MaskOrigin,
    MaskState,
    Stage,
    served_names,
    stage_named,
)

PACKAGE = STATIC_DIR.parent
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE)\b")
STATE_VALUES = {str(member.value) for names in SERVED for member in names if names is not Stage}


def _sql_texts(path: Path) -> list[str]:
    """The string constants of a module that hold SQL (f-string parts included)."""
    tree = ast.parse(path.read_text())
    texts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
    return [t for t in texts if isinstance(t, str) and SQL.search(t)]


def _spelled(texts: dict[str, list[str]], literal: str, values: set[str], stage: str) -> list[str]:
    """Where a text holds one of `values` as a quoted `literal` or compares a stage with a
    number: "file: [what]" for each offending text."""
    found = []
    for name, parts in texts.items():
        for text in parts:
            hits = sorted(set(re.findall(literal, text)) & values) + re.findall(stage, text)
            if hits:
                found.append(f"{name}: {hits}")
    return found


def test_no_sql_text_spells_a_state() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 20
    texts = {str(path.relative_to(PACKAGE)): _sql_texts(path) for path in modules}
    assert not _spelled(texts, r"'([a-z_]+)'", STATE_VALUES, r"stage\s*=\s*\d")


def test_the_page_uses_the_served_names() -> None:
    literals = {str(m.value) for m in (*MaskOrigin, *MaskState)}
    texts = {path.name: [path.read_text()] for path in (STATIC_DIR / "js").glob("*.js")}
    assert not _spelled(texts, r"[\"'`]([a-z_]+)[\"'`]", literals, r"stage\s*[!=]==?\s*\d")


def test_served_names_and_stage_names() -> None:
    names = served_names()
    assert names["stage"] == {"ASSISTED": 1, "SEMI": 2}
    assert names["mask_origin"] == {"MANUAL": "manual", "PREFILLED": "prefilled"}
    assert names["image_status"]["SET_ASIDE"] == "set_aside"
    assert stage_named("manual") == Stage.ASSISTED and Stage.SEMI.config_name == "semi"
    with pytest.raises(ValueError, match="manual, semi"):
        stage_named("auto")
