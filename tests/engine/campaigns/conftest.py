from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.campaigns.webapp import make_campaign


@pytest.fixture(scope="session")
def bundled_campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A campaign on the bundled photos with the bundled model, embedded (copy it to use)."""
    return make_campaign(tmp_path_factory.mktemp("webapp") / "template")
