"""E2B's Python SDK (PyPI `e2b`, unmodified) in E2B's own setup: only E2B_DOMAIN, over HTTPS.

Run by crates/bhatti/tests/e2b_tls.rs with E2B_DOMAIN=e2b.localhost:<port> (the listener's
port; the SDK puts the domain into `https://api.{domain}` and `https://{port}-{id}.{domain}` as
it is), SSL_CERT_FILE the CA `bhatti e2b cert` made, E2B_API_KEY a bhatti API key, and no
E2B_API_URL / E2B_SANDBOX_URL. `*.localhost` names resolve to loopback in the SDK's own
resolver (pyqwest). One sandbox serves the flows; the last one kills it.
"""

import os
import subprocess
import sys
import uuid

import pytest
from e2b import NotFoundException, Sandbox

RUN = uuid.uuid4().hex[:8]
DOMAIN = os.environ["E2B_DOMAIN"]


def test_the_environment_is_e2b_s_domain_setup_only():
    assert "E2B_API_URL" not in os.environ
    assert "E2B_SANDBOX_URL" not in os.environ
    assert os.environ["SSL_CERT_FILE"].endswith("ca.pem")


def test_without_the_ca_the_sdk_refuses_the_certificate():
    # A fresh process (the SDK's TLS roots are read once per process) without SSL_CERT_FILE:
    # the system's roots do not know bhatti's local CA, so the call fails on the certificate.
    env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}
    code = "from e2b import Sandbox\nSandbox.list().next_items()\n"
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0
    assert "certificate" in (r.stdout + r.stderr).lower(), r.stderr[-2000:]


@pytest.fixture(scope="module")
def sbx():
    sandbox = Sandbox.create(timeout=900, metadata={"suite": "e2b-tls", "run": RUN})
    yield sandbox
    try:
        sandbox.kill()
    except Exception:
        pass


def test_create_goes_to_api_domain_over_https(sbx):
    assert sbx.connection_config.api_url == f"https://api.{DOMAIN}"
    assert sbx.sandbox_domain == DOMAIN
    assert sbx.envd_api_url == f"https://49983-{sbx.sandbox_id}.{DOMAIN}"
    assert sbx.is_running()


def test_run_echo_gives_its_stdout(sbx):
    r = sbx.commands.run("echo over-tls")
    assert r.exit_code == 0
    assert r.stdout == "over-tls\n"


def test_files_write_then_read(sbx):
    path = f"/tmp/e2b-tls-{RUN}/a.txt"
    sbx.files.write(path, "hello over tls")
    assert sbx.files.read(path) == "hello over tls"
    assert sbx.files.exists(path)


def test_get_info_names_the_sandbox(sbx):
    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id
    assert info.metadata.get("run") == RUN


def test_kill_then_the_sandbox_is_gone(sbx):
    assert sbx.kill()
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
