"""E2B's Python SDK (PyPI `e2b`, unmodified) against bhatti's E2B-compatible listener.

Run by crates/bhatti/tests/e2b.rs with E2B_API_URL / E2B_SANDBOX_URL pointing at the
listener and E2B_API_KEY a bhatti API key; one sandbox serves the flows, the last one kills it.
"""

import time
import uuid

import pytest
from e2b import CommandExitException, NotFoundException, Sandbox, SandboxQuery

RUN = uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def sbx():
    sandbox = Sandbox.create(timeout=900, metadata={"suite": "e2b", "run": RUN})
    yield sandbox
    try:
        sandbox.kill()
    except Exception:
        pass


def test_create_answers_an_id_and_a_running_sandbox(sbx):
    assert sbx.sandbox_id
    assert sbx.is_running()


def test_run_echo_gives_its_stdout(sbx):
    r = sbx.commands.run("echo hi")
    assert r.exit_code == 0
    assert r.stdout == "hi\n"


def test_a_non_zero_exit_raises_command_exit_exception(sbx):
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("echo oops; exit 3")
    assert e.value.exit_code == 3
    assert "oops" in e.value.stdout


def test_envs_and_cwd_reach_the_command(sbx):
    r = sbx.commands.run("echo $GREETING; pwd", envs={"GREETING": "namaste"}, cwd="/tmp")
    assert r.stdout == "namaste\n/tmp\n"


def test_a_background_command_is_listed_and_reconnected_by_pid(sbx):
    handle = sbx.commands.run("sleep 3; echo finished", background=True)
    pid = handle.pid
    assert pid > 0
    assert any(p.pid == pid for p in sbx.commands.list())
    # Drop the first stream: the process goes on, and is found again by its PID.
    handle.disconnect()
    again = sbx.commands.connect(pid)
    result = again.wait()
    assert result.exit_code == 0
    assert "finished" in result.stdout


def test_kill_ends_a_background_command(sbx):
    handle = sbx.commands.run("sleep 600", background=True)
    assert sbx.commands.kill(handle.pid)
    with pytest.raises(CommandExitException):
        handle.wait()


def test_files_write_read_list_exists_make_dir_rename_remove(sbx):
    base = f"/tmp/e2b-{RUN}"
    sbx.files.write(f"{base}/a.txt", "hello")
    assert sbx.files.read(f"{base}/a.txt") == "hello"
    sbx.files.write(f"{base}/b.bin", b"\x00\x01\x02")
    assert bytes(sbx.files.read(f"{base}/b.bin", format="bytes")) == b"\x00\x01\x02"
    names = sorted(e.name for e in sbx.files.list(base))
    assert names == ["a.txt", "b.bin"]
    assert sbx.files.exists(f"{base}/a.txt")
    assert not sbx.files.exists(f"{base}/missing")
    assert sbx.files.make_dir(f"{base}/d")
    assert not sbx.files.make_dir(f"{base}/d")
    moved = sbx.files.rename(f"{base}/a.txt", f"{base}/d/c.txt")
    assert moved.path == f"{base}/d/c.txt"
    assert sbx.files.read(f"{base}/d/c.txt") == "hello"
    sbx.files.remove(f"{base}/d")
    assert not sbx.files.exists(f"{base}/d")


def test_list_filters_by_metadata(sbx):
    found = Sandbox.list(query=SandboxQuery(metadata={"run": RUN})).next_items()
    assert [s.sandbox_id for s in found] == [sbx.sandbox_id]
    none = Sandbox.list(query=SandboxQuery(metadata={"run": "nobody"})).next_items()
    assert none == []


def test_get_info_and_set_timeout(sbx):
    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id
    assert info.metadata.get("run") == RUN
    assert info.state == "running"
    before = info.end_at
    sbx.set_timeout(3600)
    after = sbx.get_info().end_at
    assert after > before


def test_zz_kill_removes_the_sandbox(sbx):
    assert sbx.kill()
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
    assert not Sandbox.kill(sbx.sandbox_id)
