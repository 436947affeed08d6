"""``keeper config check``: every misconfiguration is one ``error:`` line and exit 2, nothing written;
a good config prints a ✓ checklist. Runs the real CLI against a real anvil with the Zanbara deployment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from sqlalchemy import inspect as sa_inspect

from keeper.devchain.anvil import DEV_KEYS, Anvil, free_port
from keeper.store.engine import make_engine
from keeper.store.migrate import head_revision, upgrade
from keeper.store.testdb import DatabaseUnavailable, throwaway_database

pytestmark = pytest.mark.integration

KEEPER = Path(sys.executable).with_name("keeper")


@dataclass
class Env:
    anvil: Anvil
    deployments: Path
    deployment: dict
    db: Path  # a migrated SQLite database
    folder: Path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from eth_account import Account

    from keeper.chain.connect import connect
    from keeper.devchain.deploy import deploy

    folder = tmp_path_factory.mktemp("config_check")
    with Anvil() as node:
        w3 = connect(node.url, 31337)
        dep = deploy(
            w3, DEV_KEYS[0], Account.from_key(DEV_KEYS[1]).address, Account.from_key(DEV_KEYS[2]).address
        )
        path = dep.save(folder / "deployments.json")
        db = folder / "keeper.db"
        engine = make_engine(f"sqlite:///{db}")
        upgrade(engine)
        engine.dispose()
        yield Env(node, path, json.loads(path.read_text()), db, folder)


def write(folder: Path, name: str, text: str) -> Path:
    p = folder / name
    p.write_text(text)
    return p


def toml(
    env: Env,
    *,
    rpc: str | None = None,
    deployments: Path | None = None,
    db: str | None = None,
    extra: str = "",
    chain_extra: str = "chain_id = 31337",
    auto_migrate: bool = False,
) -> str:
    return f"""
[chain]
rpc_urls = ["{rpc or env.anvil.url}"]
deployments_file = "{deployments or env.deployments}"
{chain_extra}

[database]
url = "{db or f"sqlite:///{env.db}"}"
auto_migrate = {"true" if auto_migrate else "false"}
{extra}
"""


def check(config: Path | None, *args: str, **env_extra: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
    env["KEEPER_PRIVATE_KEY"] = DEV_KEYS[0]
    if config is not None:
        env["KEEPER_CONFIG"] = str(config)
    for k, v in env_extra.items():
        if v == "":
            env.pop(k, None)
        else:
            env[k] = v
    p = subprocess.run(
        [str(KEEPER), "config", "check", *args], env=env, capture_output=True, text=True, timeout=60
    )
    return p.returncode, p.stdout, p.stderr


def assert_one_error(result: tuple[int, str, str], *fragments: str) -> str:
    rc, out, err = result
    lines = err.strip().splitlines()
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "✓" not in out
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.suffix != ".toml"}


def test_good_config_prints_a_checklist_and_writes_nothing(chain: Env) -> None:
    cfg = write(chain.folder, "good.toml", toml(chain))
    before = snapshot(chain.folder)
    rc, out, err = check(cfg)
    assert rc == 0, err
    assert err == ""
    text = out
    for expected in (
        "config",
        "deployments file",
        "RPC",
        "contract code",
        "ABIs match",
        "database",
        f"schema at the code's revision {head_revision()}",
        "leader election: single node",
        "signing key 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    ):
        assert expected in text, text
    assert all(line.startswith(("✓", "!")) for line in out.strip().splitlines())
    assert snapshot(chain.folder) == before


@pytest.mark.parametrize(
    "body, fragments",
    [
        ("[chain]\nchain_id = = 1\n", ["is not valid TOML", "line 2"]),
        ("[chian]\nchain_id = 1\n", ["unknown config key chian", "did you mean chain?"]),
        ('[chain]\nrpc_url = "http://127.0.0.1:8545"\n', ["unknown config key chain.rpc_url", "rpc_urls?"]),
        ("[chain]\nrequest_timeout = -1\n", ["invalid config chain.request_timeout", "greater than 0"]),
        ('[database]\nauto_migrate = "maybe"\n', ["invalid config database.auto_migrate"]),
        ("[leader]\nsession_timeout = 1\n", ["invalid config leader.session_timeout"]),
    ],
    ids=["bad-toml", "unknown-section", "unknown-key", "bad-value", "bad-bool", "bad-leader"],
)
def test_bad_config_file(chain: Env, tmp_path: Path, body: str, fragments: list[str]) -> None:
    assert_one_error(check(write(tmp_path, "c.toml", body)), *fragments)


def test_config_file_missing_or_unreadable(chain: Env, tmp_path: Path) -> None:
    assert_one_error(check(tmp_path / "nope.toml"), "config file not found")
    (tmp_path / "dir.toml").mkdir()
    assert_one_error(check(tmp_path / "dir.toml"), "cannot read config file")
    assert_one_error(check(None, "--config", str(tmp_path / "nope.toml")), "config file not found")


def test_bad_environment_overrides(chain: Env) -> None:
    cfg = write(chain.folder, "env.toml", toml(chain))
    assert_one_error(
        check(cfg, KEEPER_CHAIN__RPC_URL="http://x"),
        "unknown config key chain.rpc_url in environment variable KEEPER_CHAIN__RPC_URL",
    )
    assert_one_error(check(cfg, KEEPER_CHAIN__REQUEST_TIMEOUT="soon"), "invalid config chain.request_timeout")


def test_unreachable_rpc(chain: Env, tmp_path: Path) -> None:
    port = free_port()
    cfg = write(tmp_path, "c.toml", toml(chain, rpc=f"http://127.0.0.1:{port}"))
    assert_one_error(check(cfg), f"cannot reach RPC http://127.0.0.1:{port}", "connection refused")


def test_wrong_chain(chain: Env, tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.toml", toml(chain, chain_extra="chain_id = 1"))
    assert_one_error(check(cfg), "chain.chain_id is 1 but the deployments file", "is for chain 31337")
    dep = dict(chain.deployment, chain_id=10)
    other = write(tmp_path, "dep10.json", json.dumps(dep))
    cfg = write(tmp_path, "d.toml", toml(chain, deployments=other, chain_extra=""))
    assert_one_error(check(cfg), "serves chain 31337, expected 10")


def test_deployments_file_missing(chain: Env, tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.toml", toml(chain, deployments=tmp_path / "none.json"))
    assert_one_error(check(cfg), "deployments file not found")


def test_no_code_at_an_address(chain: Env, tmp_path: Path) -> None:
    dep = json.loads(json.dumps(chain.deployment))
    dep["contracts"]["LiquidityVault"] = "0x000000000000000000000000000000000000dEaD"
    path = write(tmp_path, "dep.json", json.dumps(dep))
    cfg = write(tmp_path, "c.toml", toml(chain, deployments=path))
    assert_one_error(
        check(cfg), "no contract code for LiquidityVault at 0x000000000000000000000000000000000000dEaD"
    )
    dep = json.loads(json.dumps(chain.deployment))
    dep["markets"][0]["primary"] = "0x000000000000000000000000000000000000bEEF"
    path = write(tmp_path, "dep2.json", json.dumps(dep))
    cfg = write(tmp_path, "d.toml", toml(chain, deployments=path))
    assert_one_error(check(cfg), "no contract code for the", "primary price feed")


def test_abi_does_not_match_the_code(chain: Env, tmp_path: Path) -> None:
    dep = json.loads(json.dumps(chain.deployment))
    c = dep["contracts"]
    c["Exchange"], c["InsuranceFund"] = c["InsuranceFund"], c["Exchange"]
    path = write(tmp_path, "dep.json", json.dumps(dep))
    cfg = write(tmp_path, "c.toml", toml(chain, deployments=path))
    assert_one_error(check(cfg), "does not match abis/", "functions are not in its code")


def test_database_unreachable(chain: Env, tmp_path: Path) -> None:
    port = free_port()
    cfg = write(tmp_path, "c.toml", toml(chain, db=f"postgresql://postgres:hunter2@127.0.0.1:{port}/keeper"))
    line = assert_one_error(check(cfg), "database unreachable", f"127.0.0.1:{port}", "connection refused")
    assert "hunter2" not in line


def test_schema_older_than_the_code(chain: Env, tmp_path: Path) -> None:
    missing = tmp_path / "sub" / "new.db"
    cfg = write(tmp_path, "c.toml", toml(chain, db=f"sqlite:///{missing}"))
    assert_one_error(check(cfg), "database schema is empty", "run keeper db upgrade")
    assert not missing.exists() and not missing.parent.exists()

    old = tmp_path / "old.db"
    engine = make_engine(f"sqlite:///{old}")
    upgrade(engine, "0001")
    engine.dispose()
    cfg = write(tmp_path, "d.toml", toml(chain, db=f"sqlite:///{old}"))
    before = snapshot(tmp_path)
    assert_one_error(check(cfg), "at revision 0001, older than the code's", "run keeper db upgrade")
    assert snapshot(tmp_path) == before
    # with auto_migrate the runtime will upgrade it: fine, and said so
    cfg = write(tmp_path, "e.toml", toml(chain, db=f"sqlite:///{old}", auto_migrate=True))
    rc, out, err = check(cfg)
    assert rc == 0, err
    assert f"will be upgraded to {head_revision()} at start" in out
    assert snapshot(tmp_path) == before


def test_postgres_empty_schema_creates_no_table(chain: Env, tmp_path: Path) -> None:
    try:
        with throwaway_database("postgres") as url:
            cfg = write(tmp_path, "c.toml", toml(chain, db=url))
            assert_one_error(check(cfg), "database schema is empty", "run keeper db upgrade")
            engine = make_engine(url)
            try:
                assert sa_inspect(engine).get_table_names() == []
                upgrade(engine)
            finally:
                engine.dispose()
            rc, out, err = check(cfg)
            assert rc == 0, err
            assert "leader election: PostgreSQL" in out
    except DatabaseUnavailable as exc:
        pytest.fail(str(exc))


def test_bad_or_missing_key(chain: Env, tmp_path: Path) -> None:
    cfg = write(tmp_path, "c.toml", toml(chain))
    assert_one_error(check(cfg, KEEPER_PRIVATE_KEY=""), "no signing key")
    assert_one_error(check(cfg, KEEPER_PRIVATE_KEY="0x1234"), "KEEPER_PRIVATE_KEY is not a private key")
    rc, out, err = check(cfg, "--no-key", KEEPER_PRIVATE_KEY="")
    assert rc == 0, err
    assert "signing key" not in out


def test_keystore_checks(chain: Env, tmp_path: Path) -> None:
    ks = tmp_path / "key.json"
    # pbkdf2 with few rounds: a fast test (write_keystore's scrypt default takes seconds per decrypt)
    data = Account.encrypt(bytes.fromhex(DEV_KEYS[2][2:]), "s3cret", kdf="pbkdf2", iterations=1000)
    fd = os.open(ks, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    pw = write(tmp_path, "pw", "s3cret\n")
    section = f'[executor]\nkeystore = "{ks}"\npassword_file = "{pw}"\n'
    cfg = write(tmp_path, "c.toml", toml(chain, extra=section))
    rc, out, err = check(cfg, KEEPER_PRIVATE_KEY="")
    assert rc == 0, err
    assert f"loaded from keystore {ks}" in out
    ks.chmod(0o644)
    assert_one_error(check(cfg), "accessible by group or others", "chmod 600")
    ks.chmod(0o600)
    write(tmp_path, "pw", "wrong\n")
    assert_one_error(check(cfg), "cannot decrypt keystore")
    shutil.copy(ks, tmp_path / "gone.json")
    ks.unlink()
    assert_one_error(check(cfg), "keystore not found")


def test_show_masks_secrets(chain: Env, tmp_path: Path) -> None:
    body = toml(chain, db="postgresql://keeper:hunter2@db.internal/keeper") + (
        '\n[dev]\ndeployer_key = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"\n'
        '\n[[alerts.webhooks]]\nurl = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"\n'
    )
    cfg = write(tmp_path, "c.toml", body)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
    env.update(KEEPER_CONFIG=str(cfg), KEEPER_CHAIN__RPC_URLS='["https://eth.example/v2/APIKEY123"]')
    for extra in ([], ["--json"]):
        p = subprocess.run([str(KEEPER), "config", "show", *extra], env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        for secret in ("hunter2", "ac0974bec39a17e36ba4", "XXXXSECRET", "APIKEY123", "zanbara-whales"):
            assert secret not in p.stdout
        assert "db.internal" in p.stdout and "hooks.slack.com" in p.stdout and "eth.example" in p.stdout


def test_example_toml_is_current_and_valid(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "example.toml"
    p = subprocess.run([str(KEEPER), "config", "example"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert example.read_text() == p.stdout, "run: keeper config example > config/example.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
    env["KEEPER_CONFIG"] = str(example)
    p = subprocess.run([str(KEEPER), "config", "show", "--json"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
