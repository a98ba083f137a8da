"""Real ``aitbc keys ...`` and ``aitbc receipts ...`` processes against a real
``aitbc serve``: pin keys, verify signed receipts (by id, file and stdin), refuse
tampered ones with a specific reason, check miner signatures, and rotate the
coordinator's key online and offline while old receipts stay verifiable.

Every CLI run gets its own HOME and XDG_CONFIG_HOME under the test's tmp dir, no
AITBC_* setting of the caller, and an unreachable AITBC_URL, so nothing touches the
real home or a real coordinator and every network use is explicit (``--url``).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aitbc.domain.receipts import miner_statement, sign_miner_statement, text_hash
from aitbc.domain.signing import SigningKey, b64url_encode, key_id_for
from tests.e2e.processes import AITBC, clean_env, free_port, spawn_serve, wait_healthy
from tests.e2e.processes import stop_process as stop

pytestmark = pytest.mark.e2e

ADMIN_KEY = "e2e-receipts-admin-key"
MODEL = "smollm2-135m"
PRICE = 0.02  # AIT per 1,000 tokens
START_TIMEOUT_SECONDS = 15.0
CLI_TIMEOUT_SECONDS = 60
UNREACHABLE_URL = "http://127.0.0.1:9"  # the discard port: nothing listens there
KEY_FILE_NAME = "coordinator_ed25519.pem"


# --- processes ------------------------------------------------------------------------


@dataclass
class Coordinator:
    """A running ``aitbc serve`` process on a data dir that outlives it."""

    process: subprocess.Popen[bytes]
    base_url: str
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def key_file(self) -> Path:
        return self.data_dir / KEY_FILE_NAME

    def published_keys(self) -> list[dict[str, Any]]:
        response = httpx.get(self.base_url + "/v1/keys", timeout=5)
        assert response.status_code == 200, response.text
        keys: list[dict[str, Any]] = response.json()["keys"]
        return keys

    def stop(self) -> None:
        stop(self.process)


def start_coordinator(workdir: Path, data_dir: Path) -> Coordinator:
    """``aitbc serve`` on a free port and ``data_dir``; returns once /health is ok."""
    port = free_port()
    log_path = workdir / f"serve-{port}.log"
    process = spawn_serve(port, data_dir, log_path, workdir, AITBC_ADMIN_KEY=ADMIN_KEY)
    server = Coordinator(process, f"http://127.0.0.1:{port}", data_dir, log_path)
    try:
        wait_healthy(process, server.base_url, server.log, START_TIMEOUT_SECONDS)
    except BaseException:
        stop(process)
        raise
    return server


@dataclass
class Cli:
    """Runs the real ``aitbc`` command with a private HOME."""

    home: Path

    @property
    def default_keyring(self) -> Path:
        return self.home / ".config" / "aitbc" / "keys.json"

    def __call__(
        self, *args: str | Path, stdin: bytes | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*AITBC, *map(str, args)],
            input=stdin.decode("utf-8") if stdin is not None else None,
            capture_output=True,
            text=True,
            env=clean_env(
                HOME=str(self.home),
                XDG_CONFIG_HOME=str(self.home / ".config"),
                AITBC_URL=UNREACHABLE_URL,
                **env,
            ),
            cwd=self.home,
            timeout=CLI_TIMEOUT_SECONDS,
            check=False,
        )
        return result


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"


def expect_ok(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``ok: ...`` line a successful verification prints."""
    assert result.returncode == 0, describe(result)
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ok: "), describe(result)
    return lines[0]


def expect_invalid(result: subprocess.CompletedProcess[str], error_code: str) -> str:
    """Exit 1 and exactly one stderr line ``invalid: <error_code>: <detail>``."""
    assert result.returncode == 1, describe(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, describe(result)
    assert lines[0].startswith(f"invalid: {error_code}: "), describe(result)
    assert result.stdout == "", describe(result)
    return lines[0]


def expect_cannot_run(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, describe(result)
    assert result.stderr.startswith("error: "), describe(result)
    assert "invalid:" not in result.stderr, describe(result)
    return result.stderr


# --- the market over HTTP -------------------------------------------------------------


@dataclass
class Party:
    id: str
    api_key: str
    signing_key: SigningKey | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.api_key}


@dataclass
class Completed:
    job_id: str
    receipt_id: str
    result: str
    document: bytes  # the receipt exactly as the coordinator answered it

    @property
    def receipt(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.document)
        return parsed

    @property
    def key_id(self) -> str:
        key_id: str = self.receipt["signature"]["key_id"]
        return key_id


def expect(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url.path}: "
        f"{response.status_code} {response.text}"
    )
    return response.json()


def register_client(base_url: str) -> Party:
    creds = expect(
        httpx.post(base_url + "/v1/clients/register", json={"name": "e2e"}, timeout=10), 201
    )
    return Party(creds["client_id"], creds["api_key"])


def register_miner(base_url: str, miner_id: str, *, with_key: bool = False) -> Party:
    signing_key = SigningKey.from_seed(os.urandom(32)) if with_key else None
    body: dict[str, Any] = {"miner_id": miner_id, "capabilities": [MODEL], "price": PRICE}
    if signing_key is not None:
        body["public_key"] = signing_key.public_key_b64
    creds = expect(httpx.post(base_url + "/v1/miners/register", json=body, timeout=10), 201)
    assert creds["miner_id"] == miner_id
    return Party(miner_id, creds["api_key"], signing_key)


def run_job(
    base_url: str,
    client: Party,
    miner: Party,
    *,
    prompt: str = "Name three uses of a GPU.",
    result: str = "1. Training 2. Inference 3. Rendering",
    prompt_tokens: int = 9,
    completion_tokens: int = 8,
) -> Completed:
    """Submit, claim and complete one job; the miner signs when it registered a key."""
    with httpx.Client(base_url=base_url, timeout=10) as http:
        job = expect(
            http.post("/v1/jobs", headers=client.headers, json={"prompt": prompt, "model": MODEL}),
            201,
        )
        job_id = job["job_id"]
        expect(
            http.post(
                f"/v1/jobs/{job_id}/claim", headers=miner.headers, json={"miner_id": miner.id}
            ),
            200,
        )
        body: dict[str, Any] = {
            "miner_id": miner.id,
            "result": result,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        }
        if miner.signing_key is not None:
            statement = miner_statement(
                job_id, miner.id, text_hash(result), prompt_tokens + completion_tokens
            )
            body["miner_signature"] = sign_miner_statement(miner.signing_key, statement)
        response = http.post(f"/v1/jobs/{job_id}/complete", headers=miner.headers, json=body)
        receipt = expect(response, 200)
    assert receipt["job_id"] == job_id
    assert receipt["units"] == prompt_tokens + completion_tokens
    return Completed(job_id, receipt["receipt_id"], result, response.content)


def write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def tampered(document: bytes, **changes: Any) -> bytes:
    receipt = json.loads(document)
    for name, value in changes.items():
        assert receipt[name] != value
        receipt[name] = value
    return json.dumps(receipt).encode("utf-8")


def coordinator_public_key(key_file: Path) -> bytes:
    """The raw public key of the coordinator's private key file."""
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def current_key_id(keys: list[dict[str, Any]]) -> str:
    current = [str(key["key_id"]) for key in keys if key["status"] == "current"]
    assert len(current) == 1, keys
    return current[0]


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    """One coordinator for the tests that do not change its keys."""
    workdir = tmp_path_factory.mktemp("receipts-serve")
    server = start_coordinator(workdir, workdir / "data")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    home = tmp_path / "home"
    home.mkdir()
    return Cli(home)


# --- tests ----------------------------------------------------------------------------


def test_keys_list_and_pin(shared: Coordinator, cli: Cli, tmp_path: Path) -> None:
    url = shared.base_url
    published = httpx.get(url + "/v1/keys", timeout=5).json()
    assert len(published["keys"]) == 1
    assert published["keys"][0]["owner"] == "coordinator"
    assert published["keys"][0]["status"] == "current"

    listed = cli("keys", "list", "--url", url, "--json")
    assert listed.returncode == 0, describe(listed)
    assert json.loads(listed.stdout) == published
    table = cli("keys", "list", "--url", url)
    assert published["keys"][0]["key_id"] in table.stdout and "current" in table.stdout

    keyring = tmp_path / "pinned" / "keys.json"
    pinned = cli("keys", "pin", "--url", url, "--keyring", keyring)
    assert pinned.returncode == 0, describe(pinned)
    key_id = published["keys"][0]["key_id"]
    assert key_id in pinned.stdout
    assert json.loads(keyring.read_text()) == published

    # Without --keyring: $AITBC_KEYRING, else $XDG_CONFIG_HOME/aitbc/keys.json.
    by_env = tmp_path / "env-keyring.json"
    assert cli("keys", "pin", "--url", url, AITBC_KEYRING=str(by_env)).returncode == 0
    assert json.loads(by_env.read_text()) == published
    assert not cli.default_keyring.exists()
    assert cli("keys", "pin", "--url", url).returncode == 0
    assert json.loads(cli.default_keyring.read_text()) == published


def test_verify_by_id_file_and_stdin(shared: Coordinator, cli: Cli, tmp_path: Path) -> None:
    url = shared.base_url
    client = register_client(url)
    miner = register_miner(url, "receipts-miner-plain")
    done = run_job(url, client, miner)
    receipt = done.receipt
    assert "miner_signature" not in receipt
    key_id = current_key_id(shared.published_keys())
    assert done.key_id == key_id

    keyring = tmp_path / "keys.json"
    assert cli("keys", "pin", "--url", url, "--keyring", keyring).returncode == 0
    by_id: list[str | Path] = ["--url", url, "--api-key", client.api_key, "--keyring", keyring]

    # `receipts get` answers the stored canonical document.
    got = cli(
        "receipts", "get", done.receipt_id, "--url", url, "--api-key", client.api_key, "--json"
    )
    assert got.returncode == 0, describe(got)
    assert json.loads(got.stdout) == receipt
    shown = cli("receipts", "get", done.receipt_id, "--url", url, "--api-key", client.api_key)
    assert done.receipt_id in shown.stdout and done.job_id in shown.stdout
    listed_receipts = cli("receipts", "list", "--url", url, "--api-key", client.api_key)
    assert done.receipt_id in listed_receipts.stdout

    line = expect_ok(cli("receipts", "verify", done.receipt_id, *by_id))
    assert done.receipt_id in line and done.job_id in line
    assert f"signed by coordinator key {key_id}" in line
    assert f"{receipt['units']} tokens for {receipt['price']} AIT" in line
    assert "result hash" not in line

    line = expect_ok(cli("receipts", "verify", done.receipt_id, *by_id, "--fetch-result"))
    assert "result hash matches" in line

    # Offline: a saved file (AITBC_URL is unreachable, and no --url is given).
    receipt_file = write(tmp_path / "receipt.json", done.document)
    line = expect_ok(cli("receipts", "verify", receipt_file, "--keyring", keyring))
    assert f"signed by coordinator key {key_id}" in line and "result hash" not in line
    result_file = write(tmp_path / "result.txt", done.result)
    line = expect_ok(
        cli("receipts", "verify", receipt_file, "--keyring", keyring, "--result", result_file)
    )
    assert "result hash matches" in line
    # Re-encoded (not canonical whitespace) JSON of the same receipt verifies too.
    pretty = write(tmp_path / "pretty.json", json.dumps(receipt, indent=2))
    expect_ok(cli("receipts", "verify", pretty, "--keyring", keyring))

    # stdin.
    line = expect_ok(cli("receipts", "verify", "-", "--keyring", keyring, stdin=done.document))
    assert done.receipt_id in line

    # A receipt id the coordinator does not know: cannot run.
    expect_cannot_run(cli("receipts", "verify", "rcpt_does_not_exist", *by_id))


def test_verify_refuses_tampered_receipts(shared: Coordinator, cli: Cli, tmp_path: Path) -> None:
    url = shared.base_url
    client = register_client(url)
    other_client = register_client(url)
    miner = register_miner(url, "receipts-miner-tamper")
    done = run_job(url, client, miner)
    receipt = done.receipt
    keyring = tmp_path / "keys.json"
    assert cli("keys", "pin", "--url", url, "--keyring", keyring).returncode == 0

    def verify(data: bytes | str, *extra: str | Path) -> subprocess.CompletedProcess[str]:
        path = write(tmp_path / "candidate.json", data)
        return cli("receipts", "verify", path, "--keyring", keyring, *extra)

    expect_ok(verify(done.document))

    # Any change to a signed member breaks the coordinator's signature.
    expect_invalid(verify(tampered(done.document, units=receipt["units"] + 1)), "bad_signature")
    expect_invalid(verify(tampered(done.document, price=receipt["price"] * 2)), "bad_signature")
    expect_invalid(verify(tampered(done.document, client=other_client.id)), "bad_signature")

    short_sig = dict(receipt)
    short_sig["signature"] = {**receipt["signature"], "sig": receipt["signature"]["sig"][:-4]}
    expect_invalid(verify(json.dumps(short_sig)), "malformed_signature")

    other_result = write(tmp_path / "other-result.txt", done.result + " (edited)")
    expect_invalid(verify(done.document, "--result", other_result), "result_hash_mismatch")

    text = done.document.decode("utf-8")
    assert text.startswith('{"')
    duplicated = '{"units":' + json.dumps(receipt["units"]) + "," + text[1:]
    expect_invalid(verify(duplicated), "duplicate_member")


def test_verify_key_sources(shared: Coordinator, cli: Cli, tmp_path: Path) -> None:
    url = shared.base_url
    client = register_client(url)
    miner = register_miner(url, "receipts-miner-keys")
    done = run_job(url, client, miner)
    receipt_file = write(tmp_path / "receipt.json", done.document)
    key_id = done.key_id

    # No keyring anywhere and no --pin-from: cannot run, and nothing is written.
    keyring = tmp_path / "fresh" / "keys.json"
    refused = cli("receipts", "verify", receipt_file, "--keyring", keyring)
    assert "no pinned keys" in expect_cannot_run(refused)
    assert not keyring.exists()
    expect_cannot_run(cli("receipts", "verify", receipt_file))  # the default keyring
    assert not cli.default_keyring.exists()

    # --pin-from pins once, then verifies.
    pinned = cli("receipts", "verify", receipt_file, "--keyring", keyring, "--pin-from", url)
    expect_ok(pinned)
    assert "pinned 1 key(s)" in pinned.stderr
    assert json.loads(keyring.read_text()) == {"keys": shared.published_keys()}
    # With a keyring present, --pin-from does not fetch again (an unreachable URL is fine).
    expect_ok(
        cli("receipts", "verify", receipt_file, "--keyring", keyring, "--pin-from", UNREACHABLE_URL)
    )

    # --key-file: the coordinator's key as base64url text, and as a PEM public key,
    # both derived from its private key file.
    raw = coordinator_public_key(shared.key_file)
    assert key_id_for(raw) == key_id
    b64_file = write(tmp_path / "coordinator.b64", b64url_encode(raw) + "\n")
    line = expect_ok(cli("receipts", "verify", receipt_file, "--key-file", b64_file))
    assert f"signed by coordinator key {key_id}" in line
    pem = serialization.load_pem_private_key(shared.key_file.read_bytes(), password=None)
    pem_file = write(
        tmp_path / "coordinator.pub.pem",
        pem.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    expect_ok(cli("receipts", "verify", receipt_file, "--key-file", pem_file))

    # A keyring that is not JSON: cannot run (not "invalid": the receipt was never read).
    corrupt = write(tmp_path / "corrupt.json", '{"keys": [')
    assert "cannot read pinned keys" in expect_cannot_run(
        cli("receipts", "verify", receipt_file, "--keyring", corrupt)
    )

    # Keys that are not the coordinator's: unknown_key.
    stranger = SigningKey.from_seed(os.urandom(32))
    stranger_doc = {
        "keys": [
            {
                "key_id": stranger.key_id,
                "alg": "ed25519",
                "public_key": stranger.public_key_b64,
                "owner": "coordinator",
                "status": "current",
                "valid_from": None,
                "valid_until": None,
            }
        ]
    }
    stranger_ring = write(tmp_path / "stranger.json", json.dumps(stranger_doc))
    line = expect_invalid(
        cli("receipts", "verify", receipt_file, "--keyring", stranger_ring), "unknown_key"
    )
    assert key_id in line
    # The coordinator's own key listed under a miner's name is not trusted to sign.
    impostor = {"keys": [{**shared.published_keys()[0], "owner": "receipts-miner-keys"}]}
    impostor_ring = write(tmp_path / "impostor.json", json.dumps(impostor))
    expect_invalid(
        cli("receipts", "verify", receipt_file, "--keyring", impostor_ring), "unknown_key"
    )


def test_miner_signature_is_checked_when_its_key_is_pinned(
    shared: Coordinator, cli: Cli, tmp_path: Path
) -> None:
    url = shared.base_url
    miner_id = "receipts-miner-signed"
    client = register_client(url)
    miner = register_miner(url, miner_id, with_key=True)
    assert miner.signing_key is not None
    done = run_job(url, client, miner)
    assert done.receipt["miner_signature"]["key_id"] == miner.signing_key.key_id
    receipt_file = write(tmp_path / "receipt.json", done.document)

    listed = cli("keys", "list", "--url", url, "--owner", miner_id, "--json")
    assert listed.returncode == 0, describe(listed)
    miner_keys = json.loads(listed.stdout)["keys"]
    assert [(k["key_id"], k["owner"]) for k in miner_keys] == [(miner.signing_key.key_id, miner_id)]

    keyring = tmp_path / "keys.json"
    assert cli("keys", "pin", "--url", url, "--keyring", keyring).returncode == 0
    line = expect_ok(cli("receipts", "verify", receipt_file, "--keyring", keyring))
    assert "miner signature not checked" in line

    pinned = cli("keys", "pin", "--url", url, "--owner", miner_id, "--keyring", keyring)
    assert pinned.returncode == 0, describe(pinned)
    assert miner.signing_key.key_id in pinned.stdout
    owners = sorted(k["owner"] for k in json.loads(keyring.read_text())["keys"])
    assert owners == ["coordinator", miner_id]

    line = expect_ok(cli("receipts", "verify", receipt_file, "--keyring", keyring))
    assert f"miner signature by {miner.signing_key.key_id}" in line
    assert "not checked" not in line
    line = expect_ok(
        cli(
            "receipts",
            "verify",
            done.receipt_id,
            "--keyring",
            keyring,
            "--url",
            url,
            "--api-key",
            client.api_key,
            "--fetch-result",
        )
    )
    assert f"miner signature by {miner.signing_key.key_id}" in line
    assert "result hash matches" in line


def test_verify_with_unreadable_key_file_cannot_run(
    shared: Coordinator, cli: Cli, tmp_path: Path
) -> None:
    url = shared.base_url
    done = run_job(url, register_client(url), register_miner(url, "receipts-miner-badkey"))
    receipt_file = write(tmp_path / "receipt.json", done.document)
    for name, content in (("truncated.json", b'{"keys": ['), ("binary.key", b"\xff\xfe\x00")):
        key_file = write(tmp_path / name, content)
        result = cli("receipts", "verify", receipt_file, "--key-file", key_file)
        expect_cannot_run(result)
        assert "Traceback" not in result.stderr, describe(result)


def test_keys_pin_into_corrupt_keyring_cannot_run(
    shared: Coordinator, cli: Cli, tmp_path: Path
) -> None:
    keyring = write(tmp_path / "keys.json", '{"keys": [')
    result = cli("keys", "pin", "--url", shared.base_url, "--keyring", keyring)
    expect_cannot_run(result)
    assert "Traceback" not in result.stderr, describe(result)
    assert keyring.read_text() == '{"keys": ['  # left alone for the user to look at


def test_key_file_restart_and_rotation_online_and_offline(cli: Cli, tmp_path: Path) -> None:
    """One data dir, three coordinator runs: a restart keeps the key; an online
    rotation, then an offline one, each add a key while old receipts stay valid."""
    data_dir = tmp_path / "data"
    key_file = data_dir / KEY_FILE_NAME
    server = start_coordinator(tmp_path, data_dir)
    try:
        url = server.base_url
        # The key generated at first start is private and is the one published.
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        published = server.published_keys()
        assert len(published) == 1
        k1 = current_key_id(published)
        assert key_id_for(coordinator_public_key(key_file)) == k1
        assert published[0]["public_key"] == b64url_encode(coordinator_public_key(key_file))

        client = register_client(url)
        miner = register_miner(url, "rotation-miner")
        first = run_job(url, client, miner, result="first")
        assert first.key_id == k1
        receipts = {"first": write(tmp_path / "first.json", first.document)}
        keyring = tmp_path / "keys.json"
        assert cli("keys", "pin", "--url", url, "--keyring", keyring).returncode == 0
    finally:
        server.stop()
    pem = key_file.read_bytes()

    # A restart on the same data dir keeps the key (file, mode and key_id).
    server = start_coordinator(tmp_path, data_dir)
    try:
        url = server.base_url
        assert key_file.read_bytes() == pem
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert server.published_keys() == published

        # Only the admin may rotate.
        expect_cannot_run(cli("keys", "rotate", "--url", url, "--api-key", client.api_key))
        assert current_key_id(server.published_keys()) == k1

        rotated = cli("keys", "rotate", "--url", url, "--api-key", ADMIN_KEY)
        assert rotated.returncode == 0, describe(rotated)
        keys = {key["key_id"]: key for key in server.published_keys()}
        assert len(keys) == 2
        assert keys[k1]["status"] == "retired" and keys[k1]["valid_until"] is not None
        k2 = current_key_id(list(keys.values()))
        assert k2 != k1 and k2 in rotated.stdout
        # The new private key replaced the old one in the (still private) key file.
        assert key_id_for(coordinator_public_key(key_file)) == k2
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

        second = run_job(url, client, miner, result="second")
        assert second.key_id == k2
        receipts["second"] = write(tmp_path / "second.json", second.document)

        # Pinned before the rotation: the new key is unknown, with a hint to re-pin.
        line = expect_invalid(
            cli("receipts", "verify", receipts["second"], "--keyring", keyring), "unknown_key"
        )
        assert k2 in line and "aitbc keys pin" in line

        repinned = cli("keys", "pin", "--url", url, "--keyring", keyring)
        assert repinned.returncode == 0, describe(repinned)
        assert f"new: {k2}" in repinned.stdout
        for name, key_id in (("first", k1), ("second", k2)):
            line = expect_ok(cli("receipts", "verify", receipts[name], "--keyring", keyring))
            assert f"signed by coordinator key {key_id}" in line
        # A verifier that pins only after the rotation accepts the old receipt too.
        late = tmp_path / "late-keys.json"
        expect_ok(
            cli("receipts", "verify", receipts["first"], "--keyring", late, "--pin-from", url)
        )
    finally:
        server.stop()

    # Offline rotation of the stopped coordinator.
    offline = cli("keys", "rotate", "--offline", "--data-dir", data_dir)
    assert offline.returncode == 0, describe(offline)
    k3 = key_id_for(coordinator_public_key(key_file))
    assert k3 not in (k1, k2)
    assert k2 in offline.stdout and k3 in offline.stdout
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    server = start_coordinator(tmp_path, data_dir)
    try:
        url = server.base_url
        keys = {key["key_id"]: key for key in server.published_keys()}
        assert {key_id: key["status"] for key_id, key in keys.items()} == {
            k1: "retired",
            k2: "retired",
            k3: "current",
        }
        # The client's and the miner's API keys survive the restart.
        third = run_job(url, client, miner, result="third")
        assert third.key_id == k3
        receipts["third"] = write(tmp_path / "third.json", third.document)

        expect_invalid(
            cli("receipts", "verify", receipts["third"], "--keyring", keyring), "unknown_key"
        )
        repinned = cli("keys", "pin", "--url", url, "--keyring", keyring)
        assert repinned.returncode == 0, describe(repinned)
        assert f"new: {k3}" in repinned.stdout
    finally:
        server.stop()

    # Coordinator stopped: every receipt, old and new, verifies offline.
    for name, key_id in (("first", k1), ("second", k2), ("third", k3)):
        line = expect_ok(cli("receipts", "verify", receipts[name], "--keyring", keyring))
        assert f"signed by coordinator key {key_id}" in line
