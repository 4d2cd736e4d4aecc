#!/usr/bin/env python3
"""bhatti's code interpreter server: E2B's code interpreter API on port 49999 in the guest.

The E2B SDK (`e2b_code_interpreter`) talks to this through bhatti's E2B listener. Python's
standard library HTTP server in front of IPython kernels (`ipykernel`, driven by
`jupyter_client`), one kernel per context:

- `POST /execute {code, context_id?, language?, env_vars?}`: runs `code` in the context (the
  default one when neither `context_id` nor `language` names another) and answers 200 with
  newline-delimited JSON, one object per line, streamed as the kernel produces it:
  `stdout`/`stderr` `{text, timestamp}`, `result` `{text, html, png, ..., is_main_result}`,
  `error` `{name, value, traceback}`, `number_of_executions` `{execution_count}`, and
  `end_of_execution` last. One execution at a time per context (others wait their turn).
- `POST /contexts {language?, cwd?}` -> `{id, language, cwd}`; `GET /contexts`;
  `DELETE /contexts/{id}`; `POST /contexts/{id}/restart`.
- `GET /health`.

The default context's kernel starts with the server (at boot, from /etc/bhatti/init.sh), so
the first `run_code` does not pay for it. Request bodies are bounded (413 beyond
MAX_BODY). A client that goes away mid-execution gets its execution interrupted.
"""

import json
import os
import queue
import sys
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from jupyter_client.manager import KernelManager

PORT = int(os.environ.get("CODE_INTERPRETER_PORT", "49999"))
DEFAULT_CWD = os.environ.get("CODE_INTERPRETER_CWD", "/home/user")
MAX_BODY = 8 * 1024 * 1024
KERNEL_START_TIMEOUT = 180.0
# How long /execute waits for the default context's kernel (still starting at boot).
DEFAULT_READY_TIMEOUT = 300.0
MAX_CONTEXTS = 32

# The kernel's MIME bundle -> the SDK's Result fields.
MIME_FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
}


def log(message):
    print(f"code-interpreter: {message}", file=sys.stderr, flush=True)


def now_ns():
    return time.time_ns()


class ContextError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class Context:
    """One kernel, and the lock that lets one execution run at a time."""

    def __init__(self, cwd, language="python"):
        self.id = str(uuid.uuid4())
        self.language = language
        self.cwd = cwd
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.failed = None
        self.km = None
        self.kc = None

    def describe(self):
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    def start(self):
        try:
            os.makedirs(self.cwd, exist_ok=True)
            env = dict(os.environ)
            env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
            env.pop("CODE_INTERPRETER_PORT", None)
            self.km = KernelManager(kernel_name="python3")
            started = time.monotonic()
            self.km.start_kernel(cwd=self.cwd, env=env)
            self.kc = self._client()
            log(f"context {self.id}: kernel ready in {time.monotonic() - started:.1f} s")
        except Exception as e:  # reported to every caller of this context
            self.failed = f"kernel did not start: {e}"
            log(f"context {self.id}: {self.failed}")
        finally:
            self.ready.set()

    def _client(self):
        kc = self.km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=KERNEL_START_TIMEOUT)
        return kc

    def wait_ready(self, timeout):
        if not self.ready.wait(timeout):
            raise ContextError(HTTPStatus.SERVICE_UNAVAILABLE, "the kernel is still starting")
        if self.failed:
            raise ContextError(HTTPStatus.INTERNAL_SERVER_ERROR, self.failed)

    def restart(self):
        self.wait_ready(DEFAULT_READY_TIMEOUT)
        if not self.lock.acquire(timeout=1):
            self.km.interrupt_kernel()
            self.lock.acquire()
        try:
            self.kc.stop_channels()
            self.km.restart_kernel(now=True)
            self.kc = self._client()
        finally:
            self.lock.release()

    def shutdown(self):
        try:
            if self.kc is not None:
                self.kc.stop_channels()
            if self.km is not None:
                self.km.shutdown_kernel(now=True)
        except Exception as e:
            log(f"context {self.id}: shutdown: {e}")

    def _silent(self, code):
        """Runs `code` without output or history (the env of one execution)."""
        msg_id = self.kc.execute(code, silent=True, store_history=False)
        self._drain(msg_id)

    def _drain(self, msg_id, deadline=30.0):
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            ):
                return

    def execute(self, code, env_vars, emit):
        """Runs `code`, calling `emit(obj)` for each output line. `emit` raises when the client
        went away: the kernel is interrupted then."""
        with self.lock:
            if env_vars:
                # The previous values of these variables are kept aside (on the os module, out
                # of the user's namespace) and put back after this run; other changes the code
                # makes to the environment stay.
                pairs = {str(k): str(v) for k, v in env_vars.items()}
                self._silent(
                    "__import__('os')._bhatti_saved_env = "
                    f"{{k: __import__('os').environ.get(k) for k in {list(pairs)!r}}}; "
                    f"__import__('os').environ.update({pairs!r})"
                )
            try:
                self._run(code, emit)
            finally:
                if env_vars:
                    self._silent(
                        "[__import__('os').environ.pop(k, None) if v is None "
                        "else __import__('os').environ.__setitem__(k, v) "
                        "for k, v in __import__('os').__dict__.pop('_bhatti_saved_env', {}).items()]"
                    )

    def _run(self, code, emit):
        msg_id = self.kc.execute(code, store_history=True, allow_stdin=False)
        interrupted = False
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=5)
            except queue.Empty:
                if not self.km.is_alive():
                    emit({"type": "error", "name": "KernelDied", "value": "the kernel died", "traceback": ""})
                    break
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content.get("execution_state") == "idle":
                break
            if interrupted:
                continue
            try:
                for line in lines_of(kind, content):
                    emit(line)
            except (BrokenPipeError, ConnectionError, OSError):
                # The client went away: stop the code, then wait for the kernel to settle.
                interrupted = True
                self.km.interrupt_kernel()
        if not interrupted:
            emit({"type": "end_of_execution"})


def result_of(data, is_main):
    out = {"type": "result", "is_main_result": is_main}
    for mime, field in MIME_FIELDS.items():
        if mime in data:
            out[field] = data[mime]
    extra = {k: v for k, v in data.items() if k not in MIME_FIELDS}
    if extra:
        out["extra"] = extra
    return out


def lines_of(kind, content):
    """The NDJSON objects for one iopub message."""
    if kind == "stream":
        name = "stderr" if content.get("name") == "stderr" else "stdout"
        return [{"type": name, "text": content.get("text", ""), "timestamp": now_ns()}]
    if kind == "execute_input":
        return [{"type": "number_of_executions", "execution_count": content.get("execution_count")}]
    if kind == "execute_result":
        return [result_of(content.get("data", {}), True)]
    if kind == "display_data":
        return [result_of(content.get("data", {}), False)]
    if kind == "error":
        return [
            {
                "type": "error",
                "name": content.get("ename", ""),
                "value": content.get("evalue", ""),
                "traceback": "\n".join(content.get("traceback", [])),
            }
        ]
    return []


class Contexts:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_id = {}
        self.default = Context(DEFAULT_CWD)
        self.by_id[self.default.id] = self.default
        threading.Thread(target=self.default.start, daemon=True).start()

    def get(self, context_id, language):
        if context_id:
            with self.lock:
                ctx = self.by_id.get(context_id)
            if ctx is None:
                raise ContextError(HTTPStatus.NOT_FOUND, f"context {context_id} not found")
            return ctx
        check_language(language)
        return self.default

    def create(self, language, cwd):
        check_language(language)
        ctx = Context(cwd or DEFAULT_CWD)
        with self.lock:
            if len(self.by_id) >= MAX_CONTEXTS:
                raise ContextError(HTTPStatus.TOO_MANY_REQUESTS, f"at most {MAX_CONTEXTS} contexts")
            self.by_id[ctx.id] = ctx
        ctx.start()
        if ctx.failed:
            with self.lock:
                self.by_id.pop(ctx.id, None)
            raise ContextError(HTTPStatus.INTERNAL_SERVER_ERROR, ctx.failed)
        return ctx

    def remove(self, context_id):
        with self.lock:
            ctx = self.by_id.get(context_id)
            if ctx is None:
                raise ContextError(HTTPStatus.NOT_FOUND, f"context {context_id} not found")
            if ctx is self.default:
                raise ContextError(HTTPStatus.BAD_REQUEST, "the default context cannot be removed")
            del self.by_id[context_id]
        ctx.shutdown()

    def list(self):
        with self.lock:
            return [c.describe() for c in self.by_id.values()]


def check_language(language):
    if language not in (None, "", "python", "python3"):
        raise ContextError(HTTPStatus.BAD_REQUEST, f"language {language!r} is not supported (python only)")


CONTEXTS = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bhatti-code-interpreter"

    def log_message(self, fmt, *args):
        log(fmt % args)

    def _json(self, status, value):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _empty(self, status=HTTPStatus.NO_CONTENT):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _error(self, status, message):
        self._json(status, {"error": message})

    def _body(self):
        """The JSON body, bounded by MAX_BODY."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = self._chunked()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True
                raise ContextError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
            raw = self.rfile.read(length) if length > 0 else b""
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except ValueError as e:
            raise ContextError(HTTPStatus.BAD_REQUEST, f"invalid JSON: {e}")
        if not isinstance(value, dict):
            raise ContextError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return value

    def _chunked(self):
        out = bytearray()
        while True:
            size = int(self.rfile.readline(64).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024).strip():
                    pass
                return bytes(out)
            if len(out) + size > MAX_BODY:
                self.close_connection = True
                raise ContextError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
            out += self.rfile.read(size)
            self.rfile.readline(8)

    def _route(self, method):
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        try:
            if method == "GET" and parts == ["health"]:
                return self._json(HTTPStatus.OK, {"status": "ok"})
            if method == "POST" and parts == ["execute"]:
                return self._execute()
            if parts[:1] == ["contexts"]:
                if method == "POST" and len(parts) == 1:
                    body = self._body()
                    ctx = CONTEXTS.create(body.get("language"), body.get("cwd"))
                    return self._json(HTTPStatus.OK, ctx.describe())
                if method == "GET" and len(parts) == 1:
                    return self._json(HTTPStatus.OK, CONTEXTS.list())
                if method == "DELETE" and len(parts) == 2:
                    CONTEXTS.remove(parts[1])
                    return self._empty()
                if method == "POST" and len(parts) == 3 and parts[2] == "restart":
                    CONTEXTS.get(parts[1], None).restart()
                    return self._empty()
            return self._error(HTTPStatus.NOT_FOUND, f"no route {method} {path}")
        except ContextError as e:
            return self._error(e.status, e.message)
        except (BrokenPipeError, ConnectionError):
            self.close_connection = True

    def _execute(self):
        body = self._body()
        code = body.get("code")
        if not isinstance(code, str):
            raise ContextError(HTTPStatus.BAD_REQUEST, "code must be a string")
        env_vars = body.get("env_vars") or {}
        if not isinstance(env_vars, dict):
            raise ContextError(HTTPStatus.BAD_REQUEST, "env_vars must be an object")
        ctx = CONTEXTS.get(body.get("context_id"), body.get("language"))
        ctx.wait_ready(DEFAULT_READY_TIMEOUT)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

        def emit(obj):
            line = (json.dumps(obj) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()

        try:
            ctx.execute(code, env_vars, emit)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionError, OSError):
            self.close_connection = True

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_DELETE(self):
        self._route("DELETE")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    global CONTEXTS
    # Listening first, so the port opens at once; /execute waits for the default kernel.
    server = Server(("0.0.0.0", PORT), Handler)
    CONTEXTS = Contexts()
    log(f"listening on port {PORT}")
    server.serve_forever()


if __name__ == "__main__":
    main()
