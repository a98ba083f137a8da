"""The SQLite database and its ``-wal``/``-shm`` files are private (0600), whatever
the data directory's mode and the umask: they hold every prompt and result."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aitbc.api import create_app
from tests.conftest import make_settings

DATABASE_FILES = ("aitbc.db", "aitbc.db-wal", "aitbc.db-shm")


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common default umask, under which new files are world-readable."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def open_data_dir(tmp_path: Path) -> Path:
    """An existing data directory anyone may read, as a careless operator leaves it."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    return data_dir


def modes(data_dir: Path) -> dict[str, int]:
    return {
        name: stat.S_IMODE((data_dir / name).stat().st_mode)
        for name in DATABASE_FILES
        if (data_dir / name).exists()
    }


def remove_companions(data_dir: Path) -> None:
    """What SQLite does when the last connection closes."""
    for name in DATABASE_FILES[1:]:
        (data_dir / name).unlink(missing_ok=True)


def loosen(data_dir: Path) -> None:
    """Database files readable by anyone, as an earlier version left them."""
    for name in DATABASE_FILES:
        path = data_dir / name
        path.touch()
        path.chmod(0o644)


async def run_coordinator(tmp_path: Path) -> dict[str, int]:
    """Start a coordinator, write through it, and report the file modes while it runs."""
    app = create_app(make_settings(tmp_path, "sqlite"), run_sweeper=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.post("/v1/clients/register", json={"name": "someone"})
            assert response.status_code == 201, response.text
        return modes(tmp_path / "data")


@pytest.mark.usefixtures("loose_umask")
async def test_database_files_are_private_in_an_open_directory(
    tmp_path: Path, open_data_dir: Path
) -> None:
    running = await run_coordinator(tmp_path)
    assert set(running) == set(DATABASE_FILES), running
    assert running == dict.fromkeys(DATABASE_FILES, 0o600)
    # Closed, SQLite removes -wal and -shm; the next start creates them again.
    remove_companions(open_data_dir)
    assert await run_coordinator(tmp_path) == dict.fromkeys(DATABASE_FILES, 0o600)


@pytest.mark.usefixtures("loose_umask")
async def test_database_files_left_readable_are_made_private(
    tmp_path: Path, open_data_dir: Path
) -> None:
    await run_coordinator(tmp_path)
    loosen(open_data_dir)
    assert await run_coordinator(tmp_path) == dict.fromkeys(DATABASE_FILES, 0o600)
