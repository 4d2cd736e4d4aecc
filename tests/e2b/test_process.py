"""E2B's process semantics against bhatti's listener, with E2B's Python SDK (unmodified).

Run by crates/bhatti/tests/e2b_process.rs. One sandbox of the busybox `test` image (named as
the template, so the flows never depend on which images a host has built) serves the flows:
stdout and stderr apart, callbacks, stdin, a PTY, the real guest PID and tag in the list,
signals, a background process that outlives its stream, the SDK's command timeout, a pause and
a resume. `commands.run` sends `/bin/bash -l -c ...`; the image has no bash, so the listener
runs `/bin/sh`.
"""

import time
import uuid

import pytest
from e2b import CommandExitException, Sandbox
from e2b.envd.client_sync import as_stream
from e2b.envd.process import process_pb
from e2b.envd.utils import extract_start_pid
from e2b.sandbox.commands.command_handle import PtySize
from protobuf import Oneof

RUN = uuid.uuid4().hex[:8]


def until(what, check, seconds=30.0):
    """Polls `check` until it answers something true, within a bounded deadline."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def sbx():
    sandbox = Sandbox.create(template="test", timeout=900, metadata={"suite": "process"})
    yield sandbox
    try:
        sandbox.kill()
    except Exception:
        pass


def start_tagged(sbx, tag, script):
    """`Start` with a tag, as E2B's templates start their start command (the SDK's own RPC
    client: `commands.run` has no tag argument). Answers the PID; the stream is dropped."""
    events = as_stream(
        sbx.commands._rpc.start(
            process_pb.StartRequest(
                process=process_pb.ProcessConfig(
                    cmd="/bin/sh", args=["-c", script], envs={"RUN": RUN}, cwd="/tmp"
                ),
                tag=tag,
            ),
            timeout_ms=30_000,
        )
    )
    pid = extract_start_pid(next(events), "start")
    events.close()
    return pid


def read_until(handle, text):
    """Reads a handle's stdout until it holds `text` (the stream's own deadline bounds it)."""
    seen = ""
    for stdout, _stderr, _pty in handle:
        seen += stdout or ""
        if text in seen:
            return seen
    raise AssertionError(f"the stream ended before {text!r}: {seen!r}")


def alive(sbx, pid):
    return sbx.commands.run(f"kill -0 {pid} && echo yes || echo no").stdout.strip() == "yes"


def test_stdout_and_stderr_arrive_apart(sbx):
    r = sbx.commands.run("echo out; echo err >&2; echo out2")
    assert r.exit_code == 0
    assert r.stdout == "out\nout2\n"
    assert r.stderr == "err\n"


def test_callbacks_get_their_own_stream(sbx):
    outs, errs = [], []
    sbx.commands.run(
        "echo o1; echo e1 >&2; echo o2; echo e2 >&2",
        on_stdout=outs.append,
        on_stderr=errs.append,
    )
    assert "".join(outs) == "o1\no2\n"
    assert "".join(errs) == "e1\ne2\n"


def test_a_failing_command_keeps_its_stderr(sbx):
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("echo nope >&2; exit 4")
    assert e.value.exit_code == 4
    assert e.value.stderr == "nope\n"
    assert e.value.stdout == ""


def test_send_stdin_then_close_stdin_ends_cat(sbx):
    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "hello\n")
    sbx.commands.send_stdin(h.pid, "world\n")
    sbx.commands.close_stdin(h.pid)
    r = h.wait()
    assert r.exit_code == 0
    assert r.stdout == "hello\nworld\n"


def test_a_pty_takes_input_and_is_killed(sbx):
    h = sbx.pty.create(PtySize(rows=30, cols=100))
    assert h.pid > 0
    sbx.pty.send_stdin(h.pid, b"echo pty-$((6*7)); stty size\n")
    seen = b""
    for _stdout, _stderr, pty in h:
        if pty is not None:
            seen += pty
        if b"pty-42" in seen and b"30 100" in seen:
            break
    assert b"pty-42" in seen and b"30 100" in seen
    assert sbx.pty.kill(h.pid)
    until("the pty to go", lambda: all(p.pid != h.pid for p in sbx.commands.list()))


def test_list_shows_the_real_guest_pid_tag_and_config(sbx):
    pid = start_tagged(sbx, f"svc-{RUN}", "sleep 600")
    listed = [p for p in sbx.commands.list() if p.pid == pid]
    assert len(listed) == 1, sbx.commands.list()
    p = listed[0]
    assert p.tag == f"svc-{RUN}"
    assert (p.cmd, p.args, p.envs, p.cwd) == ("/bin/sh", ["-c", "sleep 600"], {"RUN": RUN}, "/tmp")
    # The PID is the guest's: `ps` shows it and `kill -0` reaches it.
    ps = sbx.commands.run("ps -o pid,args").stdout.splitlines()[1:]
    assert any(line.split()[0] == str(pid) and "sleep 600" in line for line in ps), ps
    assert alive(sbx, pid)
    # Reconnect by tag: the same process.
    events = as_stream(
        sbx.commands._rpc.connect(
            process_pb.ConnectRequest(
                process=process_pb.ProcessSelector(selector=Oneof("tag", f"svc-{RUN}"))
            ),
            timeout_ms=30_000,
        )
    )
    assert extract_start_pid(next(events), "connect") == pid
    events.close()
    assert sbx.commands.kill(pid)
    until("the tagged process to go", lambda: not alive(sbx, pid))


def test_sigterm_is_sigterm_and_sigkill_is_sigkill(sbx):
    # The trap answers SIGTERM with exit 7; SIGKILL cannot be trapped.
    trap = "trap 'exit 7' TERM; echo ready; while :; do sleep 0.2; done"
    h = sbx.commands.run(trap, background=True)
    read_until(h, "ready")
    sbx.commands._rpc.send_signal(
        process_pb.SendSignalRequest(
            process=process_pb.ProcessSelector(selector=Oneof("pid", h.pid)),
            signal=process_pb.Signal.SIGTERM,
        ),
        timeout_ms=30_000,
    )
    with pytest.raises(CommandExitException) as e:
        h.wait()
    assert e.value.exit_code == 7
    h = sbx.commands.run(trap, background=True)
    read_until(h, "ready")
    assert sbx.commands.kill(h.pid)
    with pytest.raises(CommandExitException) as e:
        h.wait()
    assert e.value.exit_code == 137


def test_the_sdk_timeout_ends_the_stream_not_the_process(sbx):
    marker = f"/tmp/timeout-{RUN}"
    h = sbx.commands.run(f"sleep 6; echo done > {marker}", background=True, timeout=2)
    pid = h.pid
    with pytest.raises(Exception):
        h.wait()  # the SDK's 2 s timeout cuts the stream
    assert alive(sbx, pid)
    until("the process to finish on its own", lambda: sbx.files.exists(marker), seconds=60)
    assert sbx.files.read(marker) == "done\n"


def test_zz_a_background_process_survives_pause_and_resume_and_is_reconnected_by_pid(sbx):
    h = sbx.commands.run(
        "i=0; while [ $i -lt 600 ]; do echo tick-$i; i=$((i+1)); sleep 0.5; done",
        background=True,
    )
    pid = h.pid
    h.disconnect()
    assert alive(sbx, pid)
    assert sbx.pause()
    again = Sandbox.connect(sbx.sandbox_id)
    assert any(p.pid == pid for p in again.commands.list())
    assert alive(again, pid)
    handle = again.commands.connect(pid)
    read_until(handle, "tick-")
    assert again.commands.kill(pid)
    until("the ticker to go", lambda: not alive(again, pid))
