"""sandboxkit's in-sandbox driver: the far end of the driver protocol (docs/protocol.md).

One file, standard library only, Python 3.8+. The host sends this source over stdin and the
sandbox's Python runs it, so no image needs sandboxkit installed. It keeps one persistent
namespace, runs the code the host sends, relays tool calls to the host and reports results.

The protocol travels on private duplicates of the original stdin/stdout; file descriptors 0, 1
and 2 are re-pointed (0 to /dev/null, 1 and 2 to a capture pipe) so nothing user code, C
extensions or child processes write can reach the protocol stream.
"""

import ast
import collections
import json
import linecache
import os
import select
import signal
import sys
import threading
import time
import traceback

PROTOCOL_VERSION = 1
_CHUNK = 1 << 16
_PIPE_SIZE = 1 << 20
# A large read size costs a large allocation per message: big payloads use _fill instead.
_READ_SIZE = 1 << 16
# Polling without sleep before blocking, in seconds; 0 where the host says a relay sits between
# us (the relay needs the CPU more than we need the wake-up saved).
_SPIN_SECONDS = float(os.environ.pop("SANDBOXKIT_SPIN_SECONDS", "0.0002") or 0)
_yield_cpu = getattr(os, "sched_yield", lambda: None)
_FILE_PREFIX = "<sandbox-"
_DRIVER_FILE = "sandboxkit_driver.py"


class _Submitted(BaseException):
    """Raised by SUBMIT to unwind user code; carries the submitted fields."""

    def __init__(self, fields):
        BaseException.__init__(self)
        self.fields = fields


class _Interrupted(BaseException):
    """Raised in user code when the host interrupts an execute that ran past its timeout."""


class _BadRequest(Exception):
    """The host's execute request could not be applied (e.g. a reference to an unknown cache key)."""


class ToolError(RuntimeError):
    """Raised in sandbox code when a host tool fails; the message is 'ExceptionType: message'."""


class Channel(object):
    """The protocol stream: JSON lines on private copies of the original fds 0 and 1.

    Whichever thread holds the driver's read role calls :meth:`read` (never two at once).
    """

    def __init__(self):
        self.in_fd = os.dup(0)
        self.out_fd = os.dup(1)
        self.diag_fd = os.dup(2)
        for fd in (self.in_fd, self.out_fd, self.diag_fd):
            os.set_inheritable(fd, False)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        try:  # fewer context switches for large messages (Linux pipes; harmless elsewhere)
            import fcntl

            fcntl.fcntl(self.in_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
        except (ImportError, OSError):
            pass
        self.lock = threading.Lock()
        self.buffer = bytearray()
        self.scanned = 0
        self.head = None  # a parsed message still waiting for its blobs
        self.eof = False
        self.ready = collections.deque()  # complete messages not yet dispatched
        self.poller = select.poll()
        self.poller.register(self.in_fd, select.POLLIN)

    def send(self, message):
        data = (json.dumps(message, separators=(",", ":"), default=_unserializable) + "\n").encode(
            "utf-8", "surrogatepass")
        with self.lock:
            view = memoryview(data)
            while view:
                written = os.write(self.out_fd, view)
                view = view[written:]

    def _parse(self):
        """Move complete messages from the buffer to ``ready``, in order."""
        while True:
            if self.head is None:
                index = self.buffer.find(b"\n", self.scanned)
                if index < 0:
                    self.scanned = len(self.buffer)
                    return
                line = bytes(self.buffer[:index])
                del self.buffer[:index + 1]
                self.scanned = 0
                message = json.loads(line.decode("utf-8", "surrogatepass"))
                if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                    raise ValueError("protocol messages must be JSON objects with a 'type'")
                self.head = message
            sizes = self.head.get("blobs") or []
            needed = sum(sizes)
            if len(self.buffer) < needed and not self._fill(needed):
                return
            # Raw UTF-8 payloads follow the line back to back, in order.
            blobs, offset = [], 0
            view = memoryview(self.buffer)
            for size in sizes:
                blobs.append(str(view[offset:offset + size], "utf-8", "surrogatepass"))
                offset += size
            view.release()
            del self.buffer[:needed]
            message, self.head = self.head, None
            if sizes:
                message["blobs"] = blobs
            self.ready.append(message)

    def _fill(self, needed):
        """Read the rest of a message's blobs straight into a buffer of the announced size.

        The host writes them right after the line, so this blocks only briefly; False at EOF.
        """
        have = len(self.buffer)
        buffer = bytearray(needed)
        buffer[:have] = self.buffer
        view = memoryview(buffer)
        while have < needed:
            count = os.readv(self.in_fd, [view[have:]])
            if not count:
                view.release()
                self.eof = True
                return False
            have += count
        view.release()
        self.buffer = buffer
        return True

    def wait_readable(self, spin):
        """Block until input (or EOF) is waiting. May be interrupted by a signal: consumes nothing.

        With ``spin``, polls without sleeping for a moment first, so a quick answer costs no
        wake-up (only worth it when no other thread needs the interpreter lock meanwhile).
        """
        poll = self.poller.poll
        end = time.perf_counter() + (_SPIN_SECONDS if spin else 0.0)
        while not poll(0):
            if time.perf_counter() >= end:
                poll()
                return
            _yield_cpu()  # if the host shares this CPU, let it run rather than burn the slice

    def take(self):
        """Read what is waiting into ``ready``; False at EOF. Call only after wait_readable()."""
        data = os.read(self.in_fd, _READ_SIZE)
        if not data:
            self.eof = True
            return False
        self.buffer += data
        self._parse()
        return True

    def diagnose(self, text):
        try:
            os.write(self.diag_fd, text.encode("utf-8", "replace"))
        except OSError:
            pass


def _unserializable(value):
    raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)


class OutputCapture(object):
    """Points fds 1 and 2 at an unlinked append-only file and returns what each execute wrote.

    Collecting needs no thread hand-off: the main thread reads the file's head and size and
    empties it. A watchdog thread empties a file that grows far past ``limit`` (keeping
    the head and counting the rest), so a flood of output costs disk only briefly and memory
    never. It looks every 10 ms during an execute or while the file grows, and backs off to
    every 0.5 s in an idle sandbox.
    """

    FLOOD_SLACK = 4 << 20
    WATCH_INTERVAL = 0.01
    IDLE_WATCH_INTERVAL = 0.5

    def __init__(self):
        import tempfile

        fd, path = tempfile.mkstemp(prefix="sandboxkit-output-")
        os.unlink(path)
        try:
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        except (ImportError, OSError):
            pass
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        self.fd = fd
        self.lock = threading.Lock()
        self.limit = 1000000
        self.head = None
        self.dropped = 0
        self.active = False  # an execute is running
        for name, number in (("stdout", 1), ("stderr", 2)):
            stream = os.fdopen(number, "w", encoding="utf-8", errors="backslashreplace",
                               buffering=1, closefd=False)
            setattr(sys, name, stream)
            setattr(sys, "__%s__" % name, stream)
        threading.Thread(target=self._watch, name="sandboxkit-output-watch", daemon=True).start()

    def _harvest(self):
        """Move the file's content into (head, dropped) and empty it. Call with the lock held."""
        size = os.fstat(self.fd).st_size
        if size == 0:
            if self.head is None:
                self.head = b""
            return
        if self.head is None:
            self.head = os.pread(self.fd, min(size, self.limit), 0) if size else b""
            self.dropped += size - len(self.head)
        else:
            self.dropped += size
        os.ftruncate(self.fd, 0)

    def _watch(self):
        interval = self.WATCH_INTERVAL
        last_size = 0
        while True:
            time.sleep(interval)
            try:
                size = os.fstat(self.fd).st_size
                if size > self.limit + self.FLOOD_SLACK:
                    with self.lock:
                        self._harvest()
            except OSError:
                return
            if self.active or size != last_size:
                interval = self.WATCH_INTERVAL
            else:
                interval = min(interval * 2, self.IDLE_WATCH_INTERVAL)
            last_size = size

    def begin(self, limit):
        """Start a new execute's capture (output written since the last one counts toward it)."""
        with self.lock:
            self.limit = limit
        self.active = True

    def collect(self):
        """Flush Python's streams; return (everything written since ``begin``, bytes dropped)."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        with self.lock:
            self._harvest()
            head, dropped = self.head, self.dropped
            self.head, self.dropped = None, 0
        self.active = False
        return head.decode("utf-8", "replace"), dropped


class PendingCall(object):
    """A tool call waiting for the host's reply."""

    def __init__(self):
        self.event = threading.Event()
        self.reply = None


class Driver(object):
    def __init__(self, channel, capture):
        self.channel = channel
        self.capture = capture
        self.namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        self.commands = collections.deque()
        # Whoever waits for a message reads the channel itself (one thread at a time, under
        # ``io``), and hands on what others wait for: no reader thread, no hand-off in the common
        # case. While code computes nobody reads; the timeout is a timer signal in this process.
        self.io = threading.Condition()
        self.reading = False
        self.timed_out = False
        self.pending = {}
        self.pending_lock = threading.Lock()
        self.exec_id = None
        self.interruptible = False
        self.user_interruptible = False
        self.tool_stubs = {}
        self.output_fields = None
        self.cache = {}
        self.cache_key_of = {}
        self.submission = None
        self.main_ident = threading.get_ident()
        self.host_gone = False
        self.counter = 0
        #: Threads the driver itself runs (main and the output watchdog).
        self.own_threads = threading.active_count()

    # -- host messages -------------------------------------------------------------------
    def pump(self, done):
        """Read and dispatch messages until ``done()`` is true (or the host is gone).

        On the main thread during an execute, the timeout may interrupt the wait; it can only
        strike while waiting in poll, never while input is being consumed.
        """
        on_main = threading.get_ident() == self.main_ident
        may_interrupt = on_main and self.exec_id is not None and self.user_interruptible
        while True:
            with self.io:
                while not done() and not self.host_gone and self.reading:
                    self.io.wait()
                if done() or self.host_gone:
                    return
                self.reading = True
            try:
                if may_interrupt:
                    if self.timed_out:
                        raise _Interrupted()
                    self.interruptible = True
                self.channel.wait_readable(on_main and threading.active_count() <= self.own_threads)
                if may_interrupt:
                    self.interruptible = False
                alive = self.channel.take()
            except _Interrupted:
                raise
            except Exception as exc:
                self.channel.diagnose("sandboxkit driver: bad input from host: %s: %s\n"
                                      % (type(exc).__name__, exc))
                alive = False
            finally:
                if may_interrupt:
                    self.interruptible = False
                with self.io:
                    self.reading = False
                    self.io.notify_all()
            self.dispatch(alive)

    def dispatch(self, alive):
        """Route the messages the channel has ready; ``alive`` False means the host is gone."""
        with self.io:
            while self.channel.ready:
                message = self.channel.ready.popleft()
                kind = message["type"]
                if kind == "tool_result":
                    with self.pending_lock:
                        call = self.pending.get(message.get("id"))
                    if call is not None:
                        call.reply = message
                        call.event.set()
                elif kind == "interrupt":
                    if message.get("id") == self.exec_id and self.exec_id is not None:
                        self.timed_out = True
                        if self.interruptible and threading.get_ident() != self.main_ident:
                            signal.pthread_kill(self.main_ident, signal.SIGALRM)
                else:
                    self.commands.append(message)
            if not alive:
                self.host_gone = True
                with self.pending_lock:
                    calls = list(self.pending.values())
                for call in calls:
                    call.event.set()
            self.io.notify_all()

    def next_command(self):
        """The next execute or shutdown request, or None when the host is gone."""
        self.pump(lambda: bool(self.commands))
        return self.commands.popleft() if self.commands else None

    def on_timeout_signal(self, signum, frame):
        """The execute's timer fired: interrupt user code now if that is safe, else flag it."""
        if self.exec_id is None:
            return
        self.timed_out = True
        if self.interruptible:
            self.interruptible = False
            raise _Interrupted()

    # -- sandbox-side API ------------------------------------------------------------------
    def call_tool(self, name, args, kwargs):
        exec_id = self.exec_id
        if exec_id is None:
            raise ToolError("RuntimeError: tools can only be called while an execute is running")
        on_main = threading.get_ident() == self.main_ident
        if on_main:
            # No timeout signal may land while the call is sent or input consumed; pump() lets it
            # strike only while waiting in poll.
            self.interruptible = False
            if self.timed_out:
                raise _Interrupted()
        call_id = os.urandom(12).hex()
        call = PendingCall()
        with self.pending_lock:
            self.pending[call_id] = call
        try:
            try:
                self.channel.send({"type": "tool_call", "id": call_id, "exec": exec_id, "name": name,
                                   "args": list(args), "kwargs": kwargs})
            except (TypeError, ValueError) as exc:
                raise TypeError("arguments to tool %r must be JSON-compatible: %s" % (name, exc))
            self.pump(call.event.is_set)
        finally:
            with self.pending_lock:
                self.pending.pop(call_id, None)
            if on_main:
                self.interruptible = self.user_interruptible
        if on_main and self.timed_out:
            self.interruptible = False
            raise _Interrupted()
        reply = call.reply
        if reply is None:
            raise ToolError("RuntimeError: the host went away during the call to tool %r" % name)
        if reply.get("ok"):
            return reply.get("value")
        raise ToolError("%s: %s" % (reply.get("ename", "Error"), reply.get("evalue", "")))

    def make_tool(self, name, doc):
        driver = self

        def tool(*args, **kwargs):
            return driver.call_tool(name, args, kwargs)

        tool.__name__ = tool.__qualname__ = name
        tool.__doc__ = doc or None
        return tool

    def submit(self, *args, **kwargs):
        names = self.output_fields
        if names is None:
            if len(args) == 1 and not kwargs:
                fields = {"output": args[0]}
            elif kwargs and not args:
                fields = dict(kwargs)
            else:
                raise TypeError("SUBMIT takes exactly one value here, e.g. SUBMIT(answer)")
        else:
            expected = "SUBMIT(%s)" % ", ".join(names)
            if len(args) > len(names):
                raise TypeError("%s takes %d value(s), got %d positional" % (expected, len(names), len(args)))
            fields = dict(zip(names, args))
            for key, value in kwargs.items():
                if key not in names:
                    raise TypeError("%s got an unexpected field %r; expected fields: %s"
                                    % (expected, key, ", ".join(names)))
                if key in fields:
                    raise TypeError("%s got two values for field %r" % (expected, key))
                fields[key] = value
            missing = [n for n in names if n not in fields]
            if missing:
                raise TypeError("%s is missing field(s) %s; expected fields: %s"
                                % (expected, ", ".join(missing), ", ".join(names)))
        try:
            json.dumps(fields, default=_unserializable)
        except (TypeError, ValueError):
            fields = _jsonable(fields)
        self.submission = fields
        raise _Submitted(fields)

    # -- executing -----------------------------------------------------------------------
    def configure(self, message):
        """Bind the tool stubs and SUBMIT. ``tools`` absent means: the same tools as last time."""
        tools = message.get("tools")
        if tools is not None:
            for name in self.tool_stubs:
                self.namespace.pop(name, None)
            self.tool_stubs = dict((spec["name"], self.make_tool(spec["name"], spec.get("doc"))) for spec in tools)
        # Rebound on every execute, so code that overwrote a tool's name gets the tool back.
        self.namespace.update(self.tool_stubs)
        fields = message.get("output_fields")
        self.output_fields = list(fields) if fields is not None else None
        self.namespace["SUBMIT"] = self.submit

    def inject(self, variables, blobs):
        """Bind the execute's variables: a value (cached under ``key`` when given) or a ``ref``."""
        for name, spec in variables.items():
            if "ref" in spec:
                kind, stored = self.cache[spec["ref"]]
                value = json.loads(stored) if kind == "json" else stored
            else:
                value = blobs[spec["blob"]] if "blob" in spec else spec["v"]
                self.cache.pop(self.cache_key_of.pop(name, None), None)
                key = spec.get("key")
                if key is not None:
                    # Mutable values are kept as text so every reference yields a fresh copy.
                    if isinstance(value, (dict, list)):
                        self.cache[key] = ("json", json.dumps(value))
                    else:
                        self.cache[key] = ("value", value)
                    self.cache_key_of[name] = key
            self.namespace[name] = value

    def run(self, code, timeout):
        """Run ``code``; return the value of a final expression statement (or None).

        A ``timeout`` (seconds) arms a timer whose signal interrupts the code where it stands.
        """
        self.counter += 1
        filename = "%s%d>" % (_FILE_PREFIX, self.counter)
        # Registered so tracebacks (and inspect) show the user's source lines.
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        tree = ast.parse(code, filename, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body.pop()
        body = compile(tree, filename, "exec")
        tail = compile(ast.Expression(last.value), filename, "eval") if last is not None else None
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, max(float(timeout), 0.001))
        self.user_interruptible = True
        self.interruptible = True
        try:
            if self.timed_out:
                raise _Interrupted()
            exec(body, self.namespace)
            value = eval(tail, self.namespace) if tail is not None else None
        finally:
            # Once this is False no signal raises again, so the caller's handlers run in peace.
            self.interruptible = False
        return value

    def execute(self, message):
        exec_id = message["id"]
        self.capture.begin(int(message.get("output_limit") or 1000000))
        self.submission = None
        self.timed_out = False
        self.exec_id = exec_id
        reply = {"type": "result", "id": exec_id}
        try:
            try:
                try:
                    self.configure(message)
                    self.inject(message.get("variables") or {}, message.get("blobs") or [])
                except Exception as exc:
                    raise _BadRequest("%s: %s" % (type(exc).__name__, _safe_str(exc)))
                value = self.run(message["code"], message.get("timeout"))
                if self.submission is not None:
                    reply.update(status="final", fields=self.submission)
                else:
                    reply.update(status="ok", value=_jsonable(value), has_value=value is not None)
            finally:
                self.interruptible = False
        except _BadRequest as exc:
            reply.update(status="protocol_error", ename="ProtocolError", evalue=str(exc))
        except _Submitted as submitted:
            reply.update(status="final", fields=submitted.fields)
        except _Interrupted:
            reply.update(status="timeout", ename="TimeoutError", evalue="execution interrupted",
                         traceback=_user_traceback(sys.exc_info()))
        except SyntaxError as exc:
            reply.update(status="syntax_error", ename=type(exc).__name__, evalue=_syntax_message(exc),
                         lineno=exc.lineno)
        except BaseException as exc:
            if self.submission is not None:
                reply.update(status="final", fields=self.submission)
            else:
                reply.update(status="error", ename=type(exc).__name__, evalue=_safe_str(exc),
                             traceback=_user_traceback(sys.exc_info()))
        self.user_interruptible = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.exec_id = None
        output, dropped = self.capture.collect()
        reply["output"] = output
        reply["dropped"] = dropped
        self.channel.send(reply)

    def serve(self):
        signal.signal(signal.SIGALRM, self.on_timeout_signal)
        self.channel.send({
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "python": "%d.%d.%d" % sys.version_info[:3],
            "pid": os.getpid(),
        })
        while True:
            message = self.next_command()
            if message is None or message["type"] == "shutdown":
                return
            if message["type"] == "execute":
                self.execute(message)
            else:
                self.channel.diagnose("sandboxkit driver: unknown message type %r\n" % message["type"])
                return


def _safe_str(exc):
    try:
        return str(exc)
    except Exception:
        return "<unprintable %s>" % type(exc).__name__


def _syntax_message(exc):
    text = exc.msg or "invalid syntax"
    if exc.lineno:
        text += " (line %d)" % exc.lineno
    if exc.text:
        text += "\n    " + exc.text.strip()
    return text


def _user_traceback(exc_info):
    """The traceback of the user's code alone, or "" when it would only repeat the error line."""
    etype, value, tb = exc_info
    frames = [f for f in traceback.extract_tb(tb)
              if f.filename != _DRIVER_FILE and not f.filename.startswith("<sandboxkit")]
    while frames and not frames[0].filename.startswith(_FILE_PREFIX):
        frames.pop(0)
    if not frames or (len(frames) == 1 and frames[0].lineno == 1):
        return ""
    try:
        lines = ["Traceback (most recent call last):\n"] + traceback.format_list(frames)
        lines += traceback.format_exception_only(etype, value)
        return "".join(lines)
    except Exception:
        return ""


def _jsonable(value):
    """``value`` if it is JSON-compatible (finite floats), else a JSON-compatible stand-in."""
    try:
        json.dumps(value, allow_nan=False, default=_unserializable)
        return value
    except (TypeError, ValueError, RecursionError):
        pass
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return _jsonable(dict(value._asdict()))
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (set, frozenset)):
        items = [_jsonable(item) for item in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _jsonable(v) for k, v in value.items()}
    try:
        return repr(value)
    except Exception:
        return "<unrepresentable %s>" % type(value).__name__


def _apply_limits(spec):
    """Apply ``SANDBOXKIT_RLIMITS`` (e.g. ``as=1073741824,cpu=60``) to this process."""
    if not spec:
        return
    import resource

    names = {"as": "RLIMIT_AS", "cpu": "RLIMIT_CPU", "nproc": "RLIMIT_NPROC", "fsize": "RLIMIT_FSIZE"}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        limit = getattr(resource, names[key.strip()])
        resource.setrlimit(limit, (int(value), int(value)))
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def main():
    channel = Channel()
    _apply_limits(os.environ.pop("SANDBOXKIT_RLIMITS", ""))
    capture = OutputCapture()
    driver = Driver(channel, capture)
    try:
        driver.serve()
    except BaseException:
        channel.diagnose("sandboxkit driver failed:\n" + traceback.format_exc())
        os._exit(70)
    os._exit(0)


if __name__ in ("__main__", "__sandboxkit_driver__"):
    main()
