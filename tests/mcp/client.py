"""The MCP test's client: the official `mcp` Python SDK drives `bhatti mcp` over stdio.

Run by crates/bhatti/tests/mcp.rs with the python of the venv scripts/mcp-venv makes, against a
real daemon. Environment (all required):
  MCP_TEST_BHATTI   the bhatti binary
  MCP_TEST_URL      the daemon's URL
  MCP_TEST_KEY      a valid API key
  MCP_TEST_HOME     a HOME (and BHATTI_CONFIG's directory) for the server, empty of config
  MCP_TEST_ERRLOG   where the server's stderr goes
  MCP_TEST_SANDBOX  the sandbox name to create
Prints one JSON line per tool result (so the caller can check that no key leaks) and ends with
`mcp client: all checks passed`; any failed check raises (exit 1) naming it.
"""

import asyncio
import base64
import json
import os
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

TOOLS = {
    "create_sandbox",
    "list_sandboxes",
    "destroy_sandbox",
    "exec",
    "read_file",
    "write_file",
    "publish_port",
}


def env(name):
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"{name} is not set")
    return value


def server(key):
    home = env("MCP_TEST_HOME")
    config = os.path.join(home, "config.yaml")
    open(config, "a").close()
    return StdioServerParameters(
        command=env("MCP_TEST_BHATTI"),
        args=["mcp"],
        env={
            "BHATTI_URL": env("MCP_TEST_URL"),
            "BHATTI_TOKEN": key,
            "BHATTI_CONFIG": config,
            "HOME": home,
            "BHATTI_MCP_LOG": "debug",
        },
    )


def check(cond, what, result=None):
    if not cond:
        raise AssertionError(f"{what}: {result!r}")


def text_of(result):
    return "".join(getattr(block, "text", "") for block in result.content)


async def call(session, name, args=None):
    result = await session.call_tool(name, args or {})
    print(json.dumps({"tool": name, "is_error": result.is_error, "text": text_of(result),
                      "structured": result.structured_content}), flush=True)
    return result


async def ok(session, name, args=None):
    result = await call(session, name, args)
    check(not result.is_error, f"{name} failed", text_of(result))
    check(isinstance(result.structured_content, dict), f"{name}: a JSON object", result)
    return result.structured_content


async def tool_error(session, name, args, fragment):
    result = await call(session, name, args)
    check(result.is_error, f"{name} {args!r} should be a tool error", result)
    check(fragment in text_of(result), f"{name}: the error names {fragment!r}", text_of(result))
    return text_of(result)


async def sleeps_left(session, sandbox):
    out = await ok(session, "exec", {"sandbox": sandbox, "command":
                                     "for p in /proc/[0-9]*; do cat $p/comm 2>/dev/null; done | grep -cx sleep || true"})
    return int(out["stdout"].strip() or "0")


async def flows(session, sandbox):
    listed = await session.list_tools()
    names = {tool.name for tool in listed.tools}
    check(names == TOOLS, "the tools", sorted(names))
    for tool in listed.tools:
        check(tool.input_schema.get("type") == "object", f"{tool.name}'s schema", tool.input_schema)

    created = await ok(session, "create_sandbox", {"name": sandbox, "env": {"GREETING": "namaste"}})
    check(created["name"] == sandbox and created["status"] == "running", "create_sandbox", created)

    out = await ok(session, "exec", {"sandbox": sandbox, "command": "echo hello"})
    check(out["stdout"] == "hello\n" and out["exit_code"] == 0, "echo hello", out)
    out = await ok(session, "exec", {"sandbox": sandbox, "command": "echo $GREETING-$X; pwd",
                                     "cwd": "/tmp", "env": {"X": "1"}})
    check(out["stdout"] == "namaste-1\n/tmp\n", "env and cwd", out)
    out = await ok(session, "exec", {"sandbox": sandbox, "command": "exit 3"})
    check(out["exit_code"] == 3, "exit 3", out)
    out = await ok(session, "exec", {"sandbox": sandbox,
                                     "command": ["sh", "-c", "echo oops >&2; exit 4"]})
    check(out["exit_code"] == 4 and out["stderr"] == "oops\n" and out["stdout"] == "", "argv", out)

    started = time.monotonic()
    message = await tool_error(session, "exec",
                               {"sandbox": sandbox, "command": "sleep 30", "timeout_seconds": 2},
                               "timed out after 2 s")
    elapsed = time.monotonic() - started
    check(1.5 <= elapsed < 10, "the timeout returns in under 10 s", elapsed)
    check("killed" in message, "the timeout says the command was killed", message)
    # And it was killed: no `sleep` left in the guest (bounded wait).
    deadline = time.monotonic() + 10
    while await sleeps_left(session, sandbox) > 0:
        check(time.monotonic() < deadline, "the timed-out sleep was killed", "still running")
        await asyncio.sleep(0.2)

    out = await ok(session, "exec", {"sandbox": sandbox,
                                     "command": "yes a | head -c 100000; yes b | head -c 70000 >&2"})
    check(len(out["stdout"]) == 65536 and out["stdout_truncated"], "stdout cut at 64 KiB", len(out["stdout"]))
    check(len(out["stderr"]) == 65536 and out["stderr_truncated"], "stderr cut at 64 KiB", len(out["stderr"]))
    check(any("the first 65536 of 100000 bytes" in n for n in out.get("notes", [])), "the note", out.get("notes"))

    await tool_error(session, "exec", {"sandbox": sandbox, "command": "true", "timeout_seconds": 0},
                     "timeout_seconds must be 1..=600")
    await tool_error(session, "exec", {"sandbox": sandbox, "command": "   "}, "command is empty")
    await tool_error(session, "exec", {"sandbox": "no-such-sandbox", "command": "true"}, "404")
    # Arguments of the wrong type are a JSON-RPC error (invalid params), and the session lives on.
    try:
        result = await session.call_tool("exec", {"sandbox": sandbox, "command": 3})
        check(result.is_error, "a wrongly typed argument is refused", result)
    except Exception as e:  # the SDK raises the JSON-RPC error
        print(json.dumps({"tool": "exec", "protocol_error": str(e)}), flush=True)
    out = await ok(session, "exec", {"sandbox": sandbox, "command": ["true"]})
    check(out["exit_code"] == 0, "the session still works", out)

    text = "hello from MCP\nline two ✓\n"
    await ok(session, "write_file", {"sandbox": sandbox, "path": "/tmp/hello.txt", "content": text})
    got = await ok(session, "read_file", {"sandbox": sandbox, "path": "/tmp/hello.txt"})
    check(got["encoding"] == "utf-8" and got["content"] == text and not got["truncated"], "text", got)

    blob = bytes(range(256)) * 4
    wrote = await ok(session, "write_file", {"sandbox": sandbox, "path": "/tmp/blob.bin", "mode": "0600",
                                             "content": base64.b64encode(blob).decode(), "base64": True})
    check(wrote["bytes"] == len(blob), "write_file's byte count", wrote)
    got = await ok(session, "read_file", {"sandbox": sandbox, "path": "/tmp/blob.bin"})
    check(got["encoding"] == "base64" and base64.b64decode(got["content"]) == blob, "bytes", got["encoding"])
    out = await ok(session, "exec", {"sandbox": sandbox, "command": "stat -c %a /tmp/blob.bin; sha256sum /tmp/blob.bin"})
    import hashlib
    check(out["stdout"].split() == ["600", hashlib.sha256(blob).hexdigest(), "/tmp/blob.bin"], "mode and bytes in the guest", out)

    await ok(session, "exec", {"sandbox": sandbox, "command": "yes x | head -c 1100000 > /tmp/big.txt"})
    got = await ok(session, "read_file", {"sandbox": sandbox, "path": "/tmp/big.txt"})
    check(got["truncated"] and got["bytes"] == 1 << 20 and got["size"] == 1100000 and
          len(got["content"]) == 1 << 20, "a big file is cut at 1 MiB",
          {k: v for k, v in got.items() if k != "content"})

    await tool_error(session, "read_file", {"sandbox": sandbox, "path": "/tmp/missing"}, "404")
    await tool_error(session, "write_file", {"sandbox": sandbox, "path": "/tmp/x", "content": "!!",
                                             "base64": True}, "not valid base64")

    pub = await ok(session, "publish_port", {"sandbox": sandbox, "port": 8080})
    check(pub["url"] == f"{env('MCP_TEST_URL')}/sandboxes/{created['id']}/proxy/8080/" and
          pub["public"] is False, "publish_port without a public proxy", pub)
    await tool_error(session, "publish_port", {"sandbox": sandbox, "port": 70000}, "port must be 1..65535")

    listed = await ok(session, "list_sandboxes")
    check(sandbox in [s["name"] for s in listed["sandboxes"]], "list_sandboxes", listed)

    gone = await ok(session, "destroy_sandbox", {"name": sandbox})
    check(gone["status"] == "destroyed", "destroy_sandbox", gone)
    listed = await ok(session, "list_sandboxes")
    check(sandbox not in [s["name"] for s in listed["sandboxes"]], "gone from the list", listed)
    await tool_error(session, "destroy_sandbox", {"name": sandbox}, "404")


async def wrong_key(session):
    await session.initialize()
    await tool_error(session, "list_sandboxes", {}, "401")
    await tool_error(session, "create_sandbox", {"name": "never"}, "401")


async def main():
    sandbox = env("MCP_TEST_SANDBOX")
    with open(env("MCP_TEST_ERRLOG"), "a") as errlog:
        async with stdio_client(server(env("MCP_TEST_KEY")), errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                info = await session.initialize()
                check(info.server_info.name == "bhatti", "the server's name", info.server_info)
                await flows(session, sandbox)
        async with stdio_client(server("bht_not_a_real_key"), errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await wrong_key(session)
    print("mcp client: all checks passed", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
