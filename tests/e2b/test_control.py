"""E2B's control plane with the Python SDK (PyPI `e2b`, unmodified) against bhatti's listener:
list paging and the state filter, metrics, pause / connect, the timeout (auto-pause and kill),
set_timeout, kill.

Run by crates/bhatti/tests/e2b_control.rs (E2B_API_URL / E2B_SANDBOX_URL at the listener,
E2B_API_KEY a bhatti key). Two sandboxes for the whole file (each create boots a VM): `a`
(a plain one: its timeout kills it) and `b` (`on_timeout: pause`: its timeout pauses it).
The flows run in order and build on each other.
"""

import os
import time
import uuid

import pytest
from e2b import CommandExitException, NotFoundException, Sandbox, SandboxQuery, SandboxState

RUN = uuid.uuid4().hex[:8]
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def pair():
    a = Sandbox.create(timeout=900, metadata={"suite": "e2b-control", "run": RUN, "who": "a"})
    b = Sandbox.create(
        timeout=900,
        metadata={"suite": "e2b-control", "run": RUN, "who": "b"},
        lifecycle={"on_timeout": "pause"},
    )
    yield a, b
    for s in (a, b):
        try:
            Sandbox.kill(s.sandbox_id)
        except Exception:
            pass


def wait_for(what, check, limit_s=120):
    """Polls `check` until it answers true, for at most `limit_s` seconds."""
    deadline = time.monotonic() + limit_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {limit_s} s"
        time.sleep(0.5)


def run(sbx, cmd):
    """`commands.run`, failing with the command's output when it exits non-zero."""
    try:
        return sbx.commands.run(cmd)
    except CommandExitException as e:
        pytest.fail(f"{cmd}: exit {e.exit_code}: {e.stdout!r} {e.stderr!r}")


def ids(query, **kw):
    return [s.sandbox_id for s in Sandbox.list(query=query, **kw).next_items()]


def test_list_pages_by_next_token(pair):
    a, b = pair
    paginator = Sandbox.list(query=SandboxQuery(metadata={"run": RUN}), limit=1)
    seen, pages = [], 0
    while paginator.has_next:
        page = paginator.next_items()
        pages += 1
        assert len(page) == 1, page
        seen += [s.sandbox_id for s in page]
        assert pages <= 3, seen
    assert pages == 2
    assert sorted(seen) == sorted([a.sandbox_id, b.sandbox_id])


def test_metrics_measure_cpu_memory_and_disk(pair):
    a, _ = pair
    info = a.get_info()
    busy = a.commands.run("timeout 30 sh -c 'while :; do :; done'", background=True)
    try:
        [m] = a.get_metrics()
    finally:
        a.commands.kill(busy.pid)
    # One vCPU spinning: most of the guest's time is busy (a constant would fail here).
    assert 100 / info.cpu_count * 0.5 < m.cpu_used_pct <= 100, m
    assert m.cpu_count == info.cpu_count
    assert 0 < m.mem_used < m.mem_total <= info.memory_mb * MIB, m
    assert 0 < m.mem_cache < m.mem_total, m
    assert 0 < m.disk_used < m.disk_total, m
    # 32 MiB more on the root disk (commands run as the guest's user: its home) shows in diskUsed.
    run(a, "dd if=/dev/zero of=${HOME:?}/e2b-metrics.bin bs=1M count=32 && sync")
    [after] = a.get_metrics()
    assert after.disk_used - m.disk_used >= 24 * MIB, (m, after)
    assert after.cpu_used_pct < m.cpu_used_pct, (m, after)
    run(a, "rm -f ${HOME:?}/e2b-metrics.bin")


def test_pause_pauses_and_a_second_pause_answers_false(pair):
    _, b = pair
    b.files.write("/root/before-pause.txt", "kept")
    assert b.pause() is True
    assert Sandbox.get_info(b.sandbox_id).state == SandboxState.PAUSED
    assert Sandbox.pause(b.sandbox_id) is False


def test_list_filters_by_state(pair):
    a, b = pair
    assert ids(SandboxQuery(metadata={"run": RUN}, state=[SandboxState.PAUSED])) == [b.sandbox_id]
    assert ids(SandboxQuery(metadata={"run": RUN}, state=[SandboxState.RUNNING])) == [a.sandbox_id]
    both = ids(SandboxQuery(metadata={"run": RUN}, state=[SandboxState.RUNNING, SandboxState.PAUSED]))
    assert sorted(both) == sorted([a.sandbox_id, b.sandbox_id])


def test_a_paused_sandbox_has_no_metrics(pair):
    _, b = pair
    assert Sandbox.get_metrics(b.sandbox_id) == []


def test_connect_resumes_a_paused_sandbox(pair):
    _, b = pair
    again = Sandbox.connect(b.sandbox_id, timeout=600)
    assert again.sandbox_id == b.sandbox_id
    assert Sandbox.get_info(b.sandbox_id).state == SandboxState.RUNNING
    assert again.files.read("/root/before-pause.txt") == "kept"
    assert again.commands.run("echo awake").stdout == "awake\n"


def test_set_timeout_moves_the_deadline(pair):
    a, _ = pair
    a.set_timeout(1200)
    end = a.get_info().end_at.timestamp()
    assert abs(end - (time.time() + 1200)) < 60, end


def test_auto_pause_pauses_at_the_timeout(pair):
    _, b = pair
    b.set_timeout(1)
    wait_for(
        "auto-pause at the timeout",
        lambda: Sandbox.get_info(b.sandbox_id).state == SandboxState.PAUSED,
    )
    # Paused, it stays: a paused sandbox has no running timeout.
    time.sleep(3)
    assert Sandbox.get_info(b.sandbox_id).state == SandboxState.PAUSED


def test_a_plain_timeout_kills(pair):
    a, _ = pair
    a.set_timeout(1)

    def gone():
        try:
            Sandbox.get_info(a.sandbox_id)
            return False
        except NotFoundException:
            return True

    wait_for("kill at the timeout", gone)
    assert Sandbox.kill(a.sandbox_id) is False


def test_kill_removes_a_paused_sandbox(pair):
    _, b = pair
    assert Sandbox.kill(b.sandbox_id) is True
    with pytest.raises(NotFoundException):
        Sandbox.get_info(b.sandbox_id)
    assert ids(SandboxQuery(metadata={"run": RUN})) == []


def test_a_template_id_naming_a_bhatti_template_boots_that_template():
    # The Rust side made a bhatti template (POST /templates) and names it here.
    name = os.environ["BHATTI_E2B_TEMPLATE"]
    memory = int(os.environ["BHATTI_E2B_TEMPLATE_MEMORY_MB"])
    sbx = Sandbox.create(template=name, timeout=300, metadata={"run": RUN, "who": "tpl"})
    try:
        info = sbx.get_info()
        assert info.template_id == name
        assert info.memory_mb == memory
        assert run(sbx, "echo from-template").stdout == "from-template\n"
    finally:
        assert Sandbox.kill(sbx.sandbox_id) is True
