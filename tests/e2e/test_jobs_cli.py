"""``aitbc login`` and ``aitbc jobs ...`` as real processes against a real coordinator
and miner on the bundled model: the live answer, the receipt and price at the end,
``--json`` parsed, configuration from the login file, one-line errors and exit codes."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

from tests.e2e import test_miner_daemon as daemon_tests
from tests.e2e.processes import AITBC, clean_env, free_port
from tests.e2e.test_miner_daemon import Market

market = daemon_tests.market  # the fixture: a coordinator process and a client account


def aitbc(config_home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AITBC, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(XDG_CONFIG_HOME=str(config_home), COLUMNS="200", **env),
        check=False,
    )


def test_login_then_jobs_submit_wait_streams_the_answer_and_the_price(
    market: Market, tmp_path: Path
) -> None:
    market.start_miner(miner_id="e2e-cli")
    home = tmp_path / "config"
    key = market.client_headers["X-Api-Key"]
    login = aitbc(home, "login", "--url", market.coordinator.base_url, "--api-key", key)
    assert login.returncode == 0, login.stderr
    config = home / "aitbc" / "config.json"
    assert json.loads(config.read_text()) == {"url": market.coordinator.base_url, "api_key": key}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600

    # No --url, no key: both from the login file.
    run = aitbc(home, "jobs", "submit", "Name a fruit.", "--max-tokens", "16", "--wait")
    assert run.returncode == 0, run.stderr
    answer = run.stdout.strip()
    assert answer
    assert "done: receipt rcpt_" in run.stderr and " AIT for " in run.stderr, run.stderr
    assert "Traceback" not in run.stderr

    listed = aitbc(home, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    (job,) = page["jobs"]
    assert job["status"] == "completed" and job["result"].strip() == answer
    got = json.loads(aitbc(home, "jobs", "get", job["job_id"], "--json").stdout)
    assert got["job_id"] == job["job_id"] and got["usage"] == job["usage"]
    human = aitbc(home, "jobs", "get", job["job_id"])
    assert job["job_id"] in human.stdout and "completed" in human.stdout
    streamed = aitbc(home, "jobs", "stream", job["job_id"])
    assert streamed.returncode == 0 and streamed.stdout.strip() == answer
    submitted = json.loads(aitbc(home, "jobs", "submit", "Hi", "--json").stdout)
    assert submitted["status"] in ("pending", "running", "completed")


def test_errors_print_one_line_and_exit_non_zero(market: Market, tmp_path: Path) -> None:
    home = tmp_path / "config"
    key = market.client_headers["X-Api-Key"]
    url = market.coordinator.base_url
    missing = aitbc(home, "jobs", "get", "job_" + "0" * 32, "--url", url, "--api-key", key)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"error: job job_{'0' * 32} not found (job_not_found)"
    ]
    bad_key = aitbc(home, "jobs", "list", "--url", url, "--api-key", "nope")
    assert bad_key.returncode == 1 and "Traceback" not in bad_key.stderr
    assert len(bad_key.stderr.strip().splitlines()) == 1
    # The key from the environment when no flag gives one.
    from_env = aitbc(home, "jobs", "list", "--json", AITBC_URL=url, AITBC_API_KEY=key)
    assert from_env.returncode == 0 and json.loads(from_env.stdout)["total"] == 0
    unreachable = aitbc(
        home, "jobs", "list", "--url", f"http://127.0.0.1:{free_port()}", "--api-key", key
    )
    assert unreachable.returncode == 2
    assert unreachable.stderr.startswith("error: could not reach the coordinator")
    assert len(unreachable.stderr.strip().splitlines()) == 1


def test_admin_views_are_tables_or_json(market: Market, tmp_path: Path) -> None:
    market.start_miner(miner_id="e2e-cli-admin")
    home, url = tmp_path / "config", market.coordinator.base_url
    admin_key = market.admin_headers["X-Api-Key"]
    miners = aitbc(home, "admin", "miners", "--json", "--url", url, "--api-key", admin_key)
    assert miners.returncode == 0, miners.stderr
    assert [m["miner_id"] for m in json.loads(miners.stdout)] == ["e2e-cli-admin"]
    table = aitbc(home, "admin", "miners", "--url", url, AITBC_ADMIN_KEY=admin_key)
    assert table.returncode == 0 and "e2e-cli-admin" in table.stdout
    stats = json.loads(
        aitbc(home, "admin", "stats", "--json", "--url", url, "--api-key", admin_key).stdout
    )
    assert stats["total_miners"] == 1
    refused = aitbc(
        home, "admin", "stats", "--url", url, "--api-key", market.client_headers["X-Api-Key"]
    )
    assert refused.returncode == 1 and refused.stderr.startswith("error: ")
