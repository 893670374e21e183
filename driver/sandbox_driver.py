"""sandboxkit's in-sandbox driver: the far end of the driver protocol (docs/protocol.md).

One file, standard library only, Python 3.8+. The host sends this source over stdin and the
sandbox's Python runs it, so no image needs sandboxkit installed. It keeps one persistent
namespace, runs the code the host sends, relays tool calls to the host and reports results.

The protocol travels on private duplicates of the original stdin/stdout; file descriptors 0, 1
and 2 are re-pointed (0 to /dev/null, 1 and 2 to a capture pipe) so nothing user code, C
extensions or child processes write can reach the protocol stream.

User code runs in this same process and may rebind anything it can reach (``builtins.len``,
``json.dumps``, ``os.write``, ``sys.stdout``). The driver therefore looks its builtins up in a
private snapshot taken before any of its functions exist, and calls the C-level functions it
needs through references taken at import, never through the modules user code can change.
"""

import builtins as _builtins_module

# The driver's own builtins: a snapshot, so user code that rebinds a builtin breaks only itself.
# Functions defined below look names up here (Python 3.10+ binds a function's builtins when
# it is defined; main() is entered through a fresh frame for 3.8 and 3.9, see the end).
__builtins__ = dict(_builtins_module.__dict__)
_BUILTINS = __builtins__

import _ast
import _io
import _signal
import _thread
import collections
import json.decoder
import json.encoder
import json.scanner
import linecache
import os
import select
import sys
import time

PROTOCOL_VERSION = 1
_PIPE_SIZE = 1 << 20
# A large read size costs a large allocation per message: big payloads use _fill instead.
_READ_SIZE = 1 << 16
# Polling without sleep before blocking, in seconds; 0 where the host says a relay sits between
# us (the relay needs the CPU more than we need the wake-up saved).
_SPIN_SECONDS = float(os.environ.pop("SANDBOXKIT_SPIN_SECONDS", "0.0002") or 0)
_FILE_PREFIX = "<sandbox-"
_DRIVER_FILE = "sandboxkit_driver.py"
#: After the timeout the interrupt is raised again this often until the code stops.
_REPEAT_INTERVAL = 0.1

# -- private references, taken before any user code runs ---------------------------------------
_sys = sys
_os_read = os.read
_os_readv = os.readv
_os_write = os.write
_os_dup = os.dup
_os_dup2 = os.dup2
_os_close = os.close
_os_open = os.open
_os_pipe = os.pipe
_os_exit = os._exit
_os_getpid = os.getpid
_os_urandom = os.urandom
_os_set_inheritable = os.set_inheritable
_os_get_blocking = os.get_blocking
_os_set_blocking = os.set_blocking
_io_open = _io.open
_poll = select.poll
_POLLIN = select.POLLIN
_POLL_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)
_perf_counter = time.perf_counter
_sleep = time.sleep
_yield_cpu = getattr(os, "sched_yield", lambda: None)
_get_ident = _thread.get_ident
_allocate_lock = _thread.allocate_lock
_start_thread = _thread.start_new_thread
_thread_count = getattr(_thread, "_count", lambda: 0)
_exc_info = sys.exc_info
_getframe = sys._getframe
_signal_signal = _signal.signal
_getsignal = _signal.getsignal
_setitimer = _signal.setitimer
_getitimer = _signal.getitimer
_pthread_kill = _signal.pthread_kill
_pthread_sigmask = _signal.pthread_sigmask
_default_int_handler = _signal.default_int_handler
_SIGALRM = _signal.SIGALRM
_SIGINT = _signal.SIGINT
_ITIMER_REAL = _signal.ITIMER_REAL
_SIG_BLOCK = _signal.SIG_BLOCK
_SIG_UNBLOCK = _signal.SIG_UNBLOCK
_ONLY_AST = _ast.PyCF_ONLY_AST
_Expr = _ast.Expr
_Expression = _ast.Expression
_linecache = linecache.cache
_getline = linecache.getline
_deque = collections.deque
#: The file name this source was compiled under (the bootstrap's, or a path when run directly).
_OWN_FILE = _getframe(0).f_code.co_filename


def _unserializable(value):
    raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)


# JSON through the C accelerator directly (json.dumps/loads run Python code whose builtins
# user code can rebind); the pure-Python path only where the accelerator is missing.
_c_make_encoder = json.encoder.c_make_encoder
_c_make_scanner = json.scanner.c_make_scanner
_encode_string = json.encoder.c_encode_basestring_ascii or json.encoder.encode_basestring_ascii
_py_encoders = {
    allow_nan: json.encoder.JSONEncoder(separators=(",", ":"), default=_unserializable, allow_nan=allow_nan).encode
    for allow_nan in (True, False)
}
_decoder = json.decoder.JSONDecoder()
_scan = _c_make_scanner(_decoder) if _c_make_scanner is not None else _decoder.scan_once


# Without a markers dict the C encoder keeps no state, so one instance serves every thread; a
# cyclic value then ends in RecursionError instead of ValueError, which callers treat alike.
_c_encoders = {
    allow_nan: _c_make_encoder(None, _unserializable, _encode_string, None, ":", ",", False, False, allow_nan)
    for allow_nan in (True, False)
} if _c_make_encoder is not None else None


def _dumps(value, allow_nan=True):
    """Compact JSON text of ``value``; TypeError/ValueError/RecursionError when it has none."""
    if _c_encoders is None:
        return _py_encoders[allow_nan](value)
    return "".join(_c_encoders[allow_nan](value, 0))


def _loads(text):
    """The JSON value ``text`` holds (nothing else but surrounding whitespace); ValueError if none."""
    text = text.strip(" \t\r\n")
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("expected a JSON value")
    if end != len(text):
        raise ValueError("extra data after the JSON value")
    return value


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


class _Condition(object):
    """A condition variable on raw locks (threading's runs Python code user code could break)."""

    def __init__(self):
        self.lock = _allocate_lock()
        self.waiters = []

    def __enter__(self):
        self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()

    def wait(self, timeout=-1):
        """Release the lock until notified (or ``timeout`` seconds pass); hold it again on return."""
        waiter = _allocate_lock()
        waiter.acquire()
        self.waiters.append(waiter)
        self.lock.release()
        try:
            waiter.acquire(True, timeout)
        finally:
            self.lock.acquire()
            try:
                self.waiters.remove(waiter)
            except ValueError:
                pass

    def notify_all(self):
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.release()


def _quiet_thread():
    """Keep the driver's timer and interrupt signals away from a helper thread."""
    try:
        _pthread_sigmask(_SIG_BLOCK, (_SIGALRM, _SIGINT))
    except (OSError, ValueError):
        pass


class Channel(object):
    """The protocol stream: JSON lines on private copies of the original fds 0 and 1.

    Whichever thread holds the driver's read role calls :meth:`read` (never two at once).
    """

    def __init__(self):
        self.in_fd = _os_dup(0)
        self.out_fd = _os_dup(1)
        self.diag_fd = _os_dup(2)
        for fd in (self.in_fd, self.out_fd, self.diag_fd):
            _os_set_inheritable(fd, False)
        devnull = _os_open(os.devnull, os.O_RDONLY)
        _os_dup2(devnull, 0)
        _os_close(devnull)
        try:  # fewer context switches for large messages (Linux pipes; harmless elsewhere)
            import fcntl

            fcntl.fcntl(self.in_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
        except (ImportError, OSError):
            pass
        self.lock = _allocate_lock()
        self.buffer = bytearray()
        self.scanned = 0
        self.head = None  # a parsed message still waiting for its blobs
        self.eof = False
        self.ready = _deque()  # complete messages not yet dispatched
        self.poller = _poll()
        self.poller.register(self.in_fd, _POLLIN)

    def send(self, message):
        data = (_dumps(message) + "\n").encode("utf-8", "surrogatepass")
        with self.lock:
            view = memoryview(data)
            while view:
                written = _os_write(self.out_fd, view)
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
                message = _loads(line.decode("utf-8", "surrogatepass"))
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
            count = _os_readv(self.in_fd, [view[have:]])
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

        The one place, besides running user code, where the timeout interrupt may be raised
        (see :func:`_may_interrupt`). With ``spin``, polls without sleeping for a moment first,
        so a quick answer costs no wake-up (only worth it when no other thread needs the
        interpreter lock meanwhile).
        """
        poll = self.poller.poll
        end = _perf_counter() + (_SPIN_SECONDS if spin else 0.0)
        while not poll(0):
            if _perf_counter() >= end:
                poll()
                return
            _yield_cpu()  # if the host shares this CPU, let it run rather than burn the slice

    def take(self):
        """Read what is waiting into ``ready``; False at EOF. Call only after wait_readable()."""
        data = _os_read(self.in_fd, _READ_SIZE)
        if not data:
            self.eof = True
            return False
        self.buffer += data
        self._parse()
        return True

    def diagnose(self, text):
        try:
            _os_write(self.diag_fd, text.encode("utf-8", "replace"))
        except Exception:
            pass


def _watch_host(in_fd):
    """Exit the process as soon as the protocol input hangs up (the host is gone).

    Runs on its own thread and never reads: it waits in poll() for hang-up or error alone, so
    it costs nothing per message and works while user code holds the main thread or ignores
    signals.
    """
    _quiet_thread()
    poller = _poll()
    poller.register(in_fd, _POLL_GONE & ~(select.POLLHUP | select.POLLERR | select.POLLNVAL))
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        except Exception:
            _os_exit(75)
        for _fd, mask in events:
            if mask & _POLL_GONE:
                _os_exit(0)


class OutputCapture(object):
    """Points fds 1 and 2 at a pipe and returns what each execute wrote.

    A drain thread empties the pipe: it blocks while nothing is written, and while output
    flows it wakes at most every 10 ms (every 1 ms during a flood), so chatty code costs few
    thread switches. :meth:`collect` drains synchronously at the end of an execute. At most
    ``limit`` bytes are kept as the head; the rest are counted in ``dropped``. Output written
    between executes (by background threads or child processes) counts toward the next one.
    A pipe is not subject to RLIMIT_FSIZE and needs no disk, and memory stays bounded by
    the limit.
    """

    CHUNK = 1 << 16
    FLOW_INTERVAL = 0.01
    FLOOD_INTERVAL = 0.001
    IDLE_INTERVAL = 0.1
    #: The most one drain reads before it lets the lock go (bounds collect() under a flood).
    DRAIN_BUDGET = 4 << 20

    def __init__(self):
        read_fd, write_fd = _os_pipe()
        for fd in (read_fd, write_fd):
            _os_set_inheritable(fd, False)
        self.pipe_size = 1 << 16
        try:
            import fcntl

            self.pipe_size = fcntl.fcntl(write_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
        except (ImportError, OSError):
            pass
        _os_set_blocking(read_fd, False)
        self.read_fd = read_fd
        self.write_fd = write_fd  # the driver's own copy, from which fds 1 and 2 are restored
        self.lock = _allocate_lock()
        self.limit = 1000000
        self.head = bytearray()
        self.dropped = 0
        self.scratch = bytearray(self.CHUNK)
        self.scratch_view = memoryview(self.scratch)
        self.poller = _poll()
        self.poller.register(read_fd, _POLLIN)
        self.streams = [None, None]
        self.restore()
        _start_thread(self._drain_loop, ())

    def restore(self):
        """Point fds 1 and 2 at the pipe again, and sys.stdout/stderr (and their __ originals)
        at working streams on them, whatever user code closed, replaced or re-pointed."""
        _os_dup2(self.write_fd, 1)
        _os_dup2(self.write_fd, 2)
        if not _os_get_blocking(self.write_fd):
            _os_set_blocking(self.write_fd, True)
        for index, fd, name in ((0, 1, "stdout"), (1, 2, "stderr")):
            stream = self.streams[index]
            try:
                broken = stream is None or stream.closed
            except Exception:  # e.g. detached
                broken = True
            if broken:
                stream = self.streams[index] = _io_open(
                    fd, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)
            for attribute in (name, "__%s__" % name):
                if getattr(_sys, attribute, None) is not stream:
                    setattr(_sys, attribute, stream)

    def _drain(self, budget):
        """Read what the pipe holds (up to ``budget`` bytes) into head/dropped; bytes read.

        Call with the lock held.
        """
        total = 0
        poll = self.poller.poll
        while total < budget and poll(0):
            try:
                count = _os_readv(self.read_fd, [self.scratch])
            except BlockingIOError:
                break
            if not count:
                break
            room = self.limit - len(self.head)
            if room > 0:
                self.head += self.scratch_view[:count if count < room else room]
                if count > room:
                    self.dropped += count - room
            else:
                self.dropped += count
            total += count
        return total

    def _drain_loop(self):
        # Wakes on a clock, never on a write: a thread woken by every print would cost each
        # execute that prints two thread switches. Writers wait at most one interval when the
        # pipe is full; collect() drains the rest at the end of the execute.
        _quiet_thread()
        interval = self.FLOW_INTERVAL
        while True:
            _sleep(interval)
            try:
                with self.lock:
                    got = self._drain(self.DRAIN_BUDGET)
            except Exception:
                got = 0
            if got >= self.pipe_size // 2:
                interval = self.FLOOD_INTERVAL
            elif got:
                interval = self.FLOW_INTERVAL
            else:
                interval = min(interval * 2, self.IDLE_INTERVAL)

    def begin(self, limit):
        """Start a new execute's capture: output written since the last one counts toward it."""
        with self.lock:
            self.limit = limit
            excess = len(self.head) - limit
            if excess > 0:
                self.dropped += excess
                del self.head[limit:]

    def collect(self):
        """Flush the streams; return (everything written since the last collect, bytes dropped).

        Reads what the pipe holds now, at most a few pipe-fulls: output a writer keeps
        producing meanwhile counts toward the next execute.
        """
        streams = list(self.streams)
        for name in ("stdout", "stderr"):
            stream = getattr(_sys, name, None)
            # Only plain io objects: user code's own stream classes could run anything.
            if type(stream) in (_io.TextIOWrapper, _io.BufferedWriter, _io.FileIO) and stream not in streams:
                streams.append(stream)
        for stream in streams:
            try:
                stream.flush()
            except Exception:
                pass
        with self.lock:
            self._drain(2 * self.pipe_size)
            head, dropped = self.head, self.dropped
            self.head, self.dropped = bytearray(), 0
        return head.decode("utf-8", "replace"), dropped


class PendingCall(object):
    """A tool call waiting for the host's reply."""

    def __init__(self):
        self.done = False
        self.reply = None

    def is_done(self):
        return self.done


class Driver(object):
    def __init__(self, channel, capture):
        self.channel = channel
        self.capture = capture
        self.namespace = {"__name__": "__main__", "__builtins__": dict(_BUILTINS)}
        self.commands = _deque()
        # Whoever waits for a message reads the channel itself (one thread at a time, under
        # ``io``), and hands on what others wait for: no reader thread, no hand-off in the common
        # case. While code computes nobody reads; the timeout is a timer signal in this process.
        self.io = _Condition()
        self.reading = False
        self.timed_out = False
        self.pending = {}
        self.pending_lock = _allocate_lock()
        self.exec_id = None
        self.tool_stubs = {}
        self.output_fields = None
        self.submit_check = None
        self.cache = {}
        self.cache_key_of = {}
        self.submission = None
        self.main_ident = _get_ident()
        self.host_gone = False
        self.counter = 0
        #: The timer's handler, kept as one object so it can be recognised (see restore_signals).
        self.alarm_handler = self.on_timeout_signal
        #: Threads the driver itself runs besides main: the output drain and the host watcher.
        self.own_threads = 2

    # -- host messages -------------------------------------------------------------------
    def pump(self, done):
        """Read and dispatch messages until ``done()`` is true (or the host is gone).

        On the main thread during an execute, the timeout may interrupt the wait; it can only
        strike while waiting for input, never while input is being consumed.
        """
        on_main = _get_ident() == self.main_ident
        may_interrupt = on_main and self.exec_id is not None
        while True:
            with self.io:
                while not done() and not self.host_gone and self.reading:
                    if may_interrupt:
                        # Another thread reads; look at the timeout now and then.
                        self.io.wait(_REPEAT_INTERVAL)
                        if self.timed_out:
                            raise _Interrupted()
                    else:
                        self.io.wait()
                if done() or self.host_gone:
                    return
                self.reading = True
            try:
                if may_interrupt and self.timed_out:
                    raise _Interrupted()
                self.channel.wait_readable(on_main and _thread_count() <= self.own_threads)
                alive = self.channel.take()
            except _Interrupted:
                raise
            except Exception as exc:
                self.channel.diagnose("sandboxkit driver: bad input from host: %s: %s\n"
                                      % (type(exc).__name__, _safe_str(exc)))
                alive = False
            finally:
                with self.io:
                    self.reading = False
                    self.io.notify_all()
            self.dispatch(alive)

    def dispatch(self, alive):
        """Route the messages the channel has ready; ``alive`` False means the host is gone."""
        with self.io:
            ready = self.channel.ready
            while ready:
                message = ready.popleft()
                kind = message["type"]
                if kind == "tool_result":
                    with self.pending_lock:
                        call = self.pending.get(message.get("id"))
                    if call is not None:  # a reply to an unknown call is ignored
                        call.reply = message
                        call.done = True
                elif kind == "interrupt":
                    if message.get("id") == self.exec_id and self.exec_id is not None:
                        self.interrupt_from_host()
                else:
                    self.commands.append(message)
            if not alive:
                self.host_gone = True
                with self.pending_lock:
                    calls = list(self.pending.values())
                for call in calls:
                    call.done = True
            self.io.notify_all()

    def interrupt_from_host(self):
        """The host's deadline passed: interrupt now, and keep interrupting until the code stops."""
        self.timed_out = True
        try:
            if _getitimer(_ITIMER_REAL) == (0.0, 0.0):
                _setitimer(_ITIMER_REAL, _REPEAT_INTERVAL, _REPEAT_INTERVAL)
            if _get_ident() != self.main_ident and _getsignal(_SIGALRM) is self.alarm_handler:
                _pthread_kill(self.main_ident, _SIGALRM)
        except (OSError, ValueError):
            pass

    def next_command(self):
        """The next execute or shutdown request, or None when the host is gone."""
        self.pump(lambda: bool(self.commands))
        return self.commands.popleft() if self.commands else None

    def on_timeout_signal(self, signum, frame):
        """The timer fired: note the timeout, and interrupt the code if it stands where that is safe.

        The timer repeats, so a swallowed interrupt comes again.
        """
        if self.exec_id is None:
            return
        self.timed_out = True
        if _may_interrupt(frame):
            raise _Interrupted()

    def restore_signals(self):
        """Re-install the signal handling the driver relies on, whatever earlier code changed."""
        _signal_signal(_SIGALRM, self.alarm_handler)
        if _getsignal(_SIGINT) is not _default_int_handler:
            _signal_signal(_SIGINT, _default_int_handler)
        _pthread_sigmask(_SIG_UNBLOCK, (_SIGALRM, _SIGINT))

    # -- sandbox-side API ------------------------------------------------------------------
    def call_tool(self, name, args, kwargs):
        exec_id = self.exec_id
        if exec_id is None:
            raise ToolError("RuntimeError: tools can only be called while an execute is running")
        on_main = _get_ident() == self.main_ident
        if on_main and self.timed_out:
            raise _Interrupted()
        call_id = _os_urandom(12).hex()
        call = PendingCall()
        with self.pending_lock:
            self.pending[call_id] = call
        try:
            try:
                self.channel.send({"type": "tool_call", "id": call_id, "exec": exec_id, "name": name,
                                   "args": list(args), "kwargs": kwargs})
            except (TypeError, ValueError, RecursionError) as exc:
                raise TypeError("arguments to tool %r must be JSON-compatible: %s" % (name, exc))
            self.pump(call.is_done)
        finally:
            with self.pending_lock:
                self.pending.pop(call_id, None)
        if on_main and self.timed_out:
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
        """SUBMIT: binds its values like ``def SUBMIT(field, ...)`` (``def SUBMIT(output)``
        without output fields, where keyword-only ``SUBMIT(**fields)`` is accepted too)."""
        names = self.output_fields
        if not names and kwargs and not args:
            fields = dict(kwargs)
        else:
            check = self.submit_check
            if check is None:
                check = self.submit_check = _signature_check(names or ["output"])
            try:
                values = check(*args, **kwargs)
            except TypeError as exc:
                text = _safe_str(exc)
                if names:
                    text += "; expected SUBMIT(%s)" % ", ".join(names)
                raise TypeError(text)
            fields = dict(zip(names or ["output"], values))
        try:
            _dumps(fields)
        except (TypeError, ValueError, RecursionError):
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
        fields = list(fields) if fields is not None else None
        if fields != self.output_fields:
            self.output_fields = fields
            self.submit_check = None
        self.namespace["SUBMIT"] = self.submit
        # User code gets its own copy of the builtins, fresh for each execute (as DSPy's local
        # interpreter does): rebinding one costs that code alone, and only until the next execute.
        self.namespace["__builtins__"] = dict(_BUILTINS)

    def inject(self, variables, blobs):
        """Bind the execute's variables: a value (cached under ``key`` when given) or a ``ref``."""
        for name, spec in variables.items():
            if "ref" in spec:
                kind, stored = self.cache[spec["ref"]]
                value = _loads(stored) if kind == "json" else stored
            else:
                value = blobs[spec["blob"]] if "blob" in spec else spec["v"]
                self.cache.pop(self.cache_key_of.pop(name, None), None)
                key = spec.get("key")
                if key is not None:
                    # Mutable values are kept as text so every reference yields a fresh copy.
                    if isinstance(value, (dict, list)):
                        self.cache[key] = ("json", _dumps(value))
                    else:
                        self.cache[key] = ("value", value)
                    self.cache_key_of[name] = key
            self.namespace[name] = value

    def prepare(self, code):
        """(body, tail): the code to exec, and its final expression statement compiled to eval."""
        self.counter += 1
        filename = "%s%d>" % (_FILE_PREFIX, self.counter)
        # Registered so tracebacks (and inspect) show the user's source lines.
        lines = code.splitlines(True)
        _linecache[filename] = (len(code), None, lines, filename)
        quick = _split_last_statement(code, lines, filename)
        if quick is not None:
            return quick
        tree = compile(code, filename, "exec", _ONLY_AST)
        last = None
        if tree.body and isinstance(tree.body[-1], _Expr):
            last = tree.body.pop()
        body = compile(tree, filename, "exec")
        tail = compile(_Expression(last.value), filename, "eval") if last is not None else None
        return body, tail

    def run(self, body, tail):
        """Run the user's code; return the value of its final expression (or None).

        The timeout interrupt is raised while this frame is the innermost driver frame on the
        main thread's stack (see :func:`_may_interrupt`): keep it free of driver bookkeeping.
        """
        if self.timed_out:
            raise _Interrupted()
        exec(body, self.namespace)
        return eval(tail, self.namespace) if tail is not None else None

    def execute(self, message):
        exec_id = message["id"]
        limit = int(message.get("output_limit") or 1000000)
        self.capture.restore()
        self.capture.begin(limit)
        self.restore_signals()
        self.submission = None
        self.timed_out = False
        self.exec_id = exec_id
        reply = {"type": "result", "id": exec_id}
        interrupted = None
        try:
            try:
                self.configure(message)
                self.inject(message.get("variables") or {}, message.get("blobs") or [])
            except Exception as exc:
                raise _BadRequest("%s: %s" % (type(exc).__name__, _safe_str(exc)))
            body, tail = self.prepare(message["code"])
            timeout = message.get("timeout")
            if timeout:
                # Fires at the timeout, then every _REPEAT_INTERVAL until the execute ends.
                _setitimer(_ITIMER_REAL, max(float(timeout), 0.001), _REPEAT_INTERVAL)
            value = self.run(body, tail)
            if self.submission is not None:
                reply.update(status="final", fields=self.submission)
            else:
                reply.update(status="ok", value=_jsonable(value), has_value=value is not None)
        except _BadRequest as exc:
            reply.update(status="protocol_error", ename="ProtocolError", evalue=str(exc))
        except _Submitted as submitted:
            reply.update(status="final", fields=submitted.fields)
        except _Interrupted:
            interrupted = _exc_info()
        except SyntaxError as exc:
            reply.update(status="syntax_error", ename=type(exc).__name__, evalue=_syntax_message(exc),
                         lineno=exc.lineno)
        except BaseException as exc:
            if self.submission is not None:
                reply.update(status="final", fields=self.submission)
            else:
                reply.update(status="error", ename=type(exc).__name__, evalue=_safe_str(exc),
                             args=_bounded_args(exc, limit), traceback=_user_traceback(_exc_info()))
        _setitimer(_ITIMER_REAL, 0)
        self.exec_id = None
        if (interrupted is not None or self.timed_out) and reply.get("status") != "protocol_error":
            # Past the timeout the execute counts as timed out, even if its code swallowed the
            # interrupt and then ended on its own.
            for key in ("value", "has_value", "fields", "args", "lineno"):
                reply.pop(key, None)
            reply.update(status="timeout", ename="TimeoutError", evalue="execution interrupted",
                         traceback=_user_traceback(interrupted) if interrupted is not None else "")
        output, dropped = self.capture.collect()
        reply["output"] = output
        reply["dropped"] = dropped
        self.channel.send(reply)

    def serve(self):
        self.restore_signals()
        self.channel.send({
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "python": "%d.%d.%d" % tuple(_sys.version_info[:3]),
            "pid": _os_getpid(),
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


_RUN_CODE = Driver.run.__code__
_WAIT_CODE = Channel.wait_readable.__code__


def _may_interrupt(frame):
    """Whether raising the timeout interrupt in ``frame`` (the main thread's) is safe.

    True when the innermost driver frame on the stack is the one running user code, or the
    wait for a tool result: never while the driver sends, consumes input or builds a result.
    """
    while frame is not None:
        code = frame.f_code
        filename = code.co_filename
        if filename == _OWN_FILE or filename == _DRIVER_FILE:
            return code is _RUN_CODE or code is _WAIT_CODE
        frame = frame.f_back
    return False


_NOTHING = compile("", "<sandbox>", "exec")


def _split_last_statement(code, lines, filename):
    """(body, tail) compiled straight from source when the last statement begins on the last
    line that starts in column 0, else None (then the caller parses the code to a tree).

    Going through a tree costs about twice as much as compiling source. The split is taken only
    when both parts compile on their own, so it is a boundary between top-level statements: a
    line inside a bracket, a string or a compound statement leaves a part that does not compile.
    """
    index = len(lines) - 1
    while index >= 0:
        first = lines[index][:1]
        if first and first not in " \t\r\n#":
            break
        index -= 1
    if index < 0:
        return None
    tail_source = "\n" * index + "".join(lines[index:])  # keeps the line numbers
    try:
        tail = compile(tail_source, filename, "eval")
    except SyntaxError:
        tail = None
        if ";" in lines[index]:  # "x = 1; x" ends in an expression after all
            return None
        try:  # a statement, not an expression: the whole code then has no value
            compile(tail_source, filename, "exec")
        except SyntaxError:
            return None
    head = "".join(lines[:index])
    try:
        body = compile(head, filename, "exec") if head.strip() else _NOTHING
    except SyntaxError:
        return None
    if tail is None:
        return compile(code, filename, "exec"), None
    return body, tail


def _signature_check(names):
    """A function with the signature ``SUBMIT(name, ...)`` returning its arguments as a list,
    so wrong calls fail with Python's own wording."""
    try:
        source = "def SUBMIT(%s):\n    return [%s]\n" % (", ".join(names), ", ".join(names))
        scope = {"__builtins__": {}}
        exec(compile(source, "<sandboxkit-submit>", "exec"), scope)
        return scope["SUBMIT"]
    except SyntaxError:  # names that are no identifiers: check by hand
        def check(*args, **kwargs):
            if len(args) > len(names):
                raise TypeError("SUBMIT() takes %d positional arguments but %d were given"
                                % (len(names), len(args)))
            values = dict(zip(names, args))
            for key in kwargs:
                if key not in names:
                    raise TypeError("SUBMIT() got an unexpected keyword argument %r" % key)
                if key in values:
                    raise TypeError("SUBMIT() got multiple values for argument %r" % key)
                values[key] = kwargs[key]
            missing = [name for name in names if name not in values]
            if missing:
                raise TypeError("SUBMIT() missing %d required positional argument(s): %s"
                                % (len(missing), ", ".join(repr(m) for m in missing)))
            return [values[name] for name in names]

        return check


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


def _source_line(filename, lineno):
    try:
        entry = _linecache.get(filename)
        if entry is not None and filename.startswith(_FILE_PREFIX):
            lines = entry[2]
            return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
        return _getline(filename, lineno).strip()
    except Exception:
        return ""


def _user_traceback(exc_info):
    """The traceback of the user's code alone, or "" when it would only repeat the error line.

    Formatted here rather than by the traceback module, whose Python code user code can break.
    """
    try:
        etype, value, tb = exc_info
        frames = []
        while tb is not None:
            code = tb.tb_frame.f_code
            frames.append((code.co_filename, tb.tb_lineno, code.co_name))
            tb = tb.tb_next
        frames = [f for f in frames if f[0] not in (_OWN_FILE, _DRIVER_FILE) and not f[0].startswith("<sandboxkit")]
        while frames and not frames[0][0].startswith(_FILE_PREFIX):
            frames.pop(0)
        if not frames or (len(frames) == 1 and frames[0][1] == 1):
            return ""
        lines = ["Traceback (most recent call last):\n"]
        for filename, lineno, name in frames:
            lines.append('  File "%s", line %s, in %s\n' % (filename, lineno, name))
            source = _source_line(filename, lineno) if isinstance(lineno, int) else ""
            if source:
                lines.append("    %s\n" % source)
        kind = etype.__qualname__
        module = etype.__module__
        if isinstance(module, str) and module not in ("__main__", "builtins"):
            kind = "%s.%s" % (module, kind)
        text = _safe_str(value)
        lines.append("%s: %s\n" % (kind, text) if text else "%s\n" % kind)
        return "".join(lines)
    except Exception:
        return ""


def _jsonable(value):
    """``value`` if it is JSON-compatible (finite floats), else a JSON-compatible stand-in."""
    try:
        _dumps(value, allow_nan=False)
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


def _bounded_args(exc, limit):
    """The exception's args as a JSON-compatible list, at most about ``2 * limit`` bytes of JSON.

    Long strings (and stand-ins) are cut to ``limit`` characters; once the budget is spent the
    remaining args are left out.
    """
    try:
        args = exc.args
        if not isinstance(args, tuple):
            return []
        result, budget = [], 2 * limit + 1024
        for arg in args:
            if isinstance(arg, str):
                item = arg[:limit]
            else:
                item = _jsonable(arg)
                size = len(_dumps(item))
                if size > limit:
                    item = _safe_repr(arg)[:limit]
            size = len(_dumps(item))
            if size > budget:
                break
            budget -= size
            result.append(item)
        return result
    except Exception:
        return []


def _safe_repr(value):
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
    if hasattr(_signal, "SIGXFSZ"):
        _signal_signal(_signal.SIGXFSZ, _signal.SIG_IGN)


def main():
    channel = Channel()
    _start_thread(_watch_host, (channel.in_fd,))
    _apply_limits(os.environ.pop("SANDBOXKIT_RLIMITS", ""))
    capture = OutputCapture()
    driver = Driver(channel, capture)
    try:
        driver.serve()
    except BaseException:
        import traceback

        channel.diagnose("sandboxkit driver failed:\n" + traceback.format_exc())
        _os_exit(70)
    _os_exit(0)


if __name__ in ("__main__", "__sandboxkit_driver__"):
    # Entered through a frame with other globals, so that on Python 3.8 and 3.9 (where a frame
    # shares its caller's builtins when their globals are the same) main() and everything it
    # calls look builtins up in the driver's snapshot rather than in the builtins module.
    exec("main()", {"__builtins__": _BUILTINS, "main": main})
