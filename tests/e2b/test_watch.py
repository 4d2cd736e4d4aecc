"""E2B's Python SDK (PyPI `e2b`, unmodified): watching a directory, against bhatti's listener.

Run by crates/bhatti/tests/e2b_watch.rs. One sandbox (the busybox `test` image) serves every
flow: the sync SDK's polled watcher (`files.watch_dir` + `get_new_events`) and the async SDK's
streamed one (`AsyncSandbox.connect` + `files.watch_dir(on_event=...)`). Events are awaited
with a bounded deadline, never a fixed sleep.
"""

import asyncio
import time
import uuid

import pytest
from e2b import AsyncSandbox, NotFoundException, Sandbox, SandboxException
from e2b.envd.client_sync import as_stream
from e2b.envd.process import process_pb
from e2b.envd.utils import authentication_header
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType as T

RUN = uuid.uuid4().hex[:8]
DEADLINE = 60


@pytest.fixture(scope="module")
def sbx():
    # The busybox `test` image (lohar with the WATCH extension is what matters).
    sandbox = Sandbox.create(template="test", timeout=900, metadata={"suite": "e2b-watch", "run": RUN})
    yield sandbox
    try:
        sandbox.kill()
    except Exception:
        pass


def sh(sbx, script):
    """`commands.run` with /bin/sh: the busybox `test` image has no bash (the SDK's shell), so
    this is the SDK's own start call with another program."""
    c = sbx.commands
    events = as_stream(
        c._rpc.start(
            process_pb.StartRequest(
                process=process_pb.ProcessConfig(cmd="/bin/sh", args=["-c", script])
            ),
            headers=authentication_header(c._envd_version, None),
            timeout_ms=60_000,
        )
    )
    result = c._create_handle(events, "start process", True).wait()
    assert result.exit_code == 0, result


def wait_for(handle, seen, name, kind):
    """Polls the watcher until an event `kind` of `name` arrived; `seen` keeps everything."""
    end = time.monotonic() + DEADLINE
    while True:
        if any(e.name == name and e.type == kind for e in seen):
            return
        assert time.monotonic() < end, f"no {kind} of {name!r} within {DEADLINE}s: {seen}"
        seen.extend(handle.get_new_events())
        time.sleep(0.1)


def test_sync_watch_dir_reports_each_event_type_with_its_name(sbx):
    d = f"/tmp/watch-{RUN}"
    sbx.files.make_dir(d)
    handle = sbx.files.watch_dir(d)
    seen = []
    sbx.files.write(f"{d}/a.txt", "hello")
    wait_for(handle, seen, "a.txt", T.CREATE)
    wait_for(handle, seen, "a.txt", T.WRITE)
    sh(sbx, f"echo more >> {d}/a.txt")
    seen.clear()
    wait_for(handle, seen, "a.txt", T.WRITE)
    sh(sbx, f"chmod 600 {d}/a.txt")
    wait_for(handle, seen, "a.txt", T.CHMOD)
    sbx.files.rename(f"{d}/a.txt", f"{d}/b.txt")
    wait_for(handle, seen, "a.txt", T.RENAME)
    wait_for(handle, seen, "b.txt", T.CREATE)
    sbx.files.remove(f"{d}/b.txt")
    wait_for(handle, seen, "b.txt", T.REMOVE)
    # The daemon's own temp files of an atomic write never show.
    assert not any("bhatti-tmp" in e.name for e in seen), seen
    handle.stop()
    with pytest.raises(SandboxException):
        handle.get_new_events()


def test_a_recursive_watch_sees_a_file_in_a_new_subdirectory(sbx):
    d = f"/tmp/watch-rec-{RUN}"
    sbx.files.make_dir(d)
    handle = sbx.files.watch_dir(d, recursive=True)
    seen = []
    sbx.files.make_dir(f"{d}/sub")
    wait_for(handle, seen, "sub", T.CREATE)
    sbx.files.write(f"{d}/sub/deep.txt", "x")
    wait_for(handle, seen, "sub/deep.txt", T.CREATE)
    handle.stop()


def test_watching_a_missing_directory_is_not_found(sbx):
    with pytest.raises(NotFoundException):
        sbx.files.watch_dir(f"/tmp/watch-missing-{RUN}")


def test_a_stopped_watcher_is_gone(sbx):
    d = f"/tmp/watch-stop-{RUN}"
    sbx.files.make_dir(d)
    handle = sbx.files.watch_dir(d)
    handle.stop()
    # Past the SDK's own check: the sandbox no longer knows the watcher's ID.
    handle._closed = False
    with pytest.raises(SandboxException, match="not found"):
        handle.get_new_events()


def test_the_async_sdk_receives_events_on_its_stream(sbx):
    d = f"/tmp/watch-async-{RUN}"
    sbx.files.make_dir(d)

    async def flow():
        asbx = await AsyncSandbox.connect(sbx.sandbox_id)
        got = []
        arrived = asyncio.Event()

        def on_event(e):
            got.append(e)
            if e.name == "late.txt" and e.type == T.CREATE:
                arrived.set()

        handle = await asbx.files.watch_dir(d, on_event=on_event, timeout=0)
        await asbx.files.write(f"{d}/late.txt", "x")
        await asyncio.wait_for(arrived.wait(), DEADLINE)
        await handle.stop()
        return got

    got = asyncio.run(flow())
    assert any(e.name == "late.txt" and e.type == T.CREATE for e in got), got
