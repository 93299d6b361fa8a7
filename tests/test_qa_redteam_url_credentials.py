"""A base URL's ``user:password@`` never reaches a log or a message (found by the red team).

Gateways behind basic auth are configured as ``https://user:password@host/v1``: the password
appeared in the ``run_start`` JSON event (``base_url_host`` was the whole netloc) and in the
pre-flight and wrong-endpoint messages, which reach stderr and the summary's guard.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import mock_process
from promise_helpers import cli_run, fast_config, write_jobs

from runner.urls import public_url

PASSWORD = "PASSWORD-0123456789"


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    with mock_process("--latency", "zero") as url:
        yield url


def with_password(url: str) -> str:
    return url.replace("http://", f"http://gateway-user:{PASSWORD}@", 1)


def no_password_anywhere(tmp: Path, err: str) -> None:
    assert PASSWORD not in err
    for f in tmp.iterdir():
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes(), f


def test_the_run_start_event_names_the_host_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mock_url: str
) -> None:
    jobs = write_jobs(tmp_path, 2)
    args = ["run", str(jobs), "-c", str(fast_config(tmp_path)), "--provider", "openai"]
    code, err = cli_run(
        capsys, *args, "--base-url", with_password(mock_url), "--log-format", "json"
    )
    assert code == 0, err
    host = mock_url.split("//", 1)[1].split("/", 1)[0]
    assert f'"base_url_host":"{host}"' in err
    no_password_anywhere(tmp_path, err)


def test_a_wrong_endpoint_is_named_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mock_url: str
) -> None:
    jobs = write_jobs(tmp_path, 2)
    wrong = with_password(mock_url.removesuffix("/v1") + "/nope")
    args = ["run", str(jobs), "-c", str(fast_config(tmp_path)), "--provider", "openai"]
    code, err = cli_run(capsys, *args, "--base-url", wrong)
    assert code == 2 and "/nope/" in err, err
    no_password_anywhere(tmp_path, err)


def test_an_unreachable_provider_is_named_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    jobs = write_jobs(tmp_path, 2)
    args = ["run", str(jobs), "-c", str(fast_config(tmp_path)), "--provider", "openai"]
    code, err = cli_run(capsys, *args, "--base-url", with_password(f"http://127.0.0.1:{port}/v1"))
    assert code == 75 and f"127.0.0.1:{port}" in err, err
    no_password_anywhere(tmp_path, err)


def test_public_url_drops_only_the_credentials() -> None:
    assert public_url("https://u:p@h.example:8443/v1?x=1") == "https://h.example:8443/v1?x=1"
    assert public_url("https://h.example/v1/a@b") == "https://h.example/v1/a@b"
    assert public_url("http://127.0.0.1:9/v1") == "http://127.0.0.1:9/v1"


# Hosted Pushgateways take basic auth (https://user:token@...): a failed push printed the URL.
def test_a_failed_push_names_the_pushgateway_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    jobs = write_jobs(tmp_path, 2)
    gateway = f"http://metrics-user:{PASSWORD}@127.0.0.1:{port}"
    code, err = cli_run(
        capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), "--pushgateway", gateway
    )
    assert code == 0 and "could not export metrics to pushgateway" in err, err
    assert f"http://127.0.0.1:{port}" in err
    no_password_anywhere(tmp_path, err)
