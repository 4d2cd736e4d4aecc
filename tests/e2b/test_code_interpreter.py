"""E2B's code interpreter SDK (PyPI `e2b-code-interpreter`, unmodified) against bhatti's E2B
listener: `Sandbox.create()` boots the `code-interpreter` image (template
`code-interpreter-v1`), whose server on port 49999 the listener forwards to.

Run by crates/bhatti/tests/e2b_code.rs with E2B_API_URL / E2B_SANDBOX_URL pointing at the
listener and E2B_API_KEY a bhatti API key; one sandbox serves every flow.
"""

import base64
import time

import httpx
import pytest
from e2b_code_interpreter import Sandbox


@pytest.fixture(scope="module")
def sbx():
    sandbox = Sandbox.create(timeout=900)
    yield sandbox
    try:
        sandbox.kill()
    except Exception:
        pass


def test_run_code_answers_the_value_of_the_last_expression(sbx):
    # The first call may wait for the server and its default kernel, started at boot.
    execution = sbx.run_code("1+1")
    assert execution.error is None, execution.error
    assert execution.text == "2"
    assert execution.results[0].is_main_result
    assert execution.execution_count is not None


def test_print_goes_to_logs_stdout_and_stderr(sbx):
    execution = sbx.run_code("import sys\nprint('hello')\nprint('oops', file=sys.stderr)")
    assert execution.logs.stdout == ["hello\n"]
    assert execution.logs.stderr == ["oops\n"]
    assert execution.text is None


def test_an_exception_is_the_executions_error(sbx):
    execution = sbx.run_code("1/0")
    assert execution.error is not None
    assert execution.error.name == "ZeroDivisionError"
    assert execution.error.value == "division by zero"
    assert "ZeroDivisionError" in execution.error.traceback


def test_state_is_kept_between_runs_and_a_new_context_does_not_share_it(sbx):
    sbx.run_code("kept = 41")
    assert sbx.run_code("kept + 1").text == "42"
    ctx = sbx.create_code_context()
    assert ctx.language == "python"
    assert any(c.id == ctx.id for c in sbx.list_code_contexts())
    assert sbx.run_code("'kept' in globals()", context=ctx).text == "False"
    sbx.run_code("mine = 7", context=ctx)
    assert sbx.run_code("mine", context=ctx).text == "7"
    sbx.remove_code_context(ctx)
    assert all(c.id != ctx.id for c in sbx.list_code_contexts())
    # The default context still has its state.
    assert sbx.run_code("kept").text == "41"


def test_envs_reach_the_code_for_that_run_only(sbx):
    sbx.run_code("import os; os.environ['SET_BY_CODE'] = 'kept'")
    code = "import os; (os.environ.get('GREETING'), os.environ.get('SET_BY_CODE'))"
    assert sbx.run_code(code, envs={"GREETING": "namaste"}).text == "('namaste', 'kept')"
    assert sbx.run_code(code).text == "(None, 'kept')"


def test_a_matplotlib_plot_comes_back_as_a_png(sbx):
    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.title('squares')\nplt.show()"
    )
    assert execution.error is None, execution.error
    pngs = [r.png for r in execution.results if r.png]
    assert len(pngs) == 1, execution.results
    data = base64.b64decode(pngs[0])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000


def test_on_stdout_gets_each_line_as_it_is_printed(sbx):
    seen = []
    sbx.run_code(
        "import time\nfor i in range(3):\n    print(f'line {i}', flush=True)\n    time.sleep(0.2)",
        on_stdout=lambda m: seen.append((m.line, m.timestamp)),
    )
    assert [line for line, _ in seen] == ["line 0\n", "line 1\n", "line 2\n"]
    stamps = [ts for _, ts in seen]
    # Nanoseconds since the epoch, in order.
    assert stamps == sorted(stamps) and stamps[0] > 1_600_000_000 * 10**9


def _port_url(sbx, port, path):
    return sbx.connection_config.get_sandbox_url(sbx.sandbox_id, sbx.sandbox_domain, port=port) + path


def test_another_guest_port_is_reached_through_the_listener(sbx):
    # A user's server on port 8000 (get_host(8000)'s port), reached the way the SDK reaches
    # 49999: by the E2b-Sandbox-Id / E2b-Sandbox-Port headers.
    sbx.files.write("/home/user/site/hello.txt", "hello from the guest\n")
    sbx.commands.run("cd /home/user/site && python3 -m http.server 8000", background=True)
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"}
    url = _port_url(sbx, 8000, "/hello.txt")
    deadline = time.monotonic() + 60
    while True:
        r = httpx.get(url, headers=headers, timeout=30)
        if r.status_code != 502 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 200, r.text
    assert r.text == "hello from the guest\n"
    # A token, when sent, must be the sandbox's; none is needed (E2B's public traffic).
    r = httpx.get(url, headers={**headers, "X-Access-Token": "wrong"}, timeout=30)
    assert r.status_code == 401
    # A closed port answers 502 at once.
    started = time.monotonic()
    r = httpx.get(url, headers={**headers, "E2b-Sandbox-Port": "8001"}, timeout=30)
    assert r.status_code == 502
    assert time.monotonic() - started < 20
