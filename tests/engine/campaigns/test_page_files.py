"""The annotation page's files: what the server sends for them (types, caching, isolation
headers), what it says when onnxruntime-web was not vendored, and that the package data
ships every file of the page."""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from setuptools.config.pyprojecttoml import load_file

from engine.campaigns.api import create_app
from engine.campaigns.commands import STATIC_DIR
from engine.campaigns.page import vendor_problem
from tests.engine.campaigns.bare import bare_campaign

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    campaign = bare_campaign(tmp_path / "campaign")
    return TestClient(create_app(campaign, static_dir=STATIC_DIR))


def _vendor() -> dict:
    return json.loads((STATIC_DIR / "vendor" / "vendor.json").read_text())


def test_page_files_are_served_with_their_types_and_caching(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "js/main.js" in page.text
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["cross-origin-embedder-policy"] == "require-corp"
    assert page.headers["cross-origin-opener-policy"] == "same-origin"
    module = client.get("/js/app.js")
    assert module.headers["content-type"].startswith("text/javascript")
    vendor = _vendor()
    for name in vendor["files"]:
        answer = client.get(f"/vendor/{vendor['dir']}/{name}")
        assert answer.status_code == 200
        assert "immutable" in answer.headers["cache-control"]  # versioned folder
        if name.endswith(".wasm"):
            assert answer.headers["content-type"] == "application/wasm"
            assert answer.content[:4] == b"\0asm"
        if name.endswith(".mjs"):
            assert answer.headers["content-type"].startswith("text/javascript")
    assert client.get("/vendor/vendor.json").headers["cache-control"] == "no-cache"


def test_missing_vendor_files_are_named_with_the_fix(tmp_path: Path) -> None:
    assert vendor_problem(STATIC_DIR) is None
    copy = tmp_path / "static"
    shutil.copytree(STATIC_DIR, copy)
    vendor = _vendor()
    (copy / "vendor" / vendor["dir"] / vendor["files"][-1]).unlink()
    problem = vendor_problem(copy)
    assert problem and vendor["files"][-1] in problem and "make vendor" in problem
    shutil.rmtree(copy / "vendor")
    problem = vendor_problem(copy)
    assert problem and "not vendored" in problem and "make vendor" in problem


def test_the_package_data_ships_every_page_file() -> None:
    config = load_file(REPO / "pyproject.toml")
    patterns = config["tool"]["setuptools"]["package-data"]["engine.campaigns"]
    package = STATIC_DIR.parent
    shipped = {Path(p) for pattern in patterns for p in glob.glob(str(package / pattern))}
    files = {p for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert files and files <= shipped, sorted(str(p) for p in files - shipped)


def test_make_annotate_leaves_naming_the_page_to_the_server() -> None:
    """`make annotate` once printed "open http://localhost:PORT" seconds before the server
    listened; the URL is now printed by `campaign serve` once it accepts requests."""
    recipe = (REPO / "Makefile").read_text().split("\nannotate:", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in recipe.splitlines()[1:]]
    assert lines[-1].startswith("$(VENV)/bin/saengine campaign serve"), lines
    assert not any("http://" in line for line in lines), lines
