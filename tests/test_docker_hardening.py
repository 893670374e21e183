"""The ``docker`` backend's hardening, verified from inside a sandbox.

Each test runs code in a container and asserts on what that code observes (interfaces, errors,
ids, /proc), never on the container's configuration. No test sends traffic anywhere: the only
non-loopback connection attempts happen after the sandbox code has checked that loopback is its
only interface and that it has no route, so they fail inside the sandbox's own kernel stack.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from docker_support import bounded, no_leaked_containers, sandbox  # noqa: F401  (fixtures)
from sandboxkit.errors import CodeExecutionError, CodeInterpreterError, SandboxDiedError

pytestmark = pytest.mark.usefixtures("no_leaked_containers")


def code(text: str) -> str:
    return textwrap.dedent(text).strip("\n") + "\n"


# -- network ------------------------------------------------------------------------------------
_INTERFACES = code("""
    import socket
    with open("/proc/net/dev") as f:
        dev_names = sorted(line.split(":")[0].strip() for line in f.read().splitlines()[2:] if ":" in line)
    with open("/proc/net/route") as f:
        routes = [line for line in f.read().splitlines()[1:] if line.strip()]
    {"if_nameindex": sorted(name for _, name in socket.if_nameindex()), "proc_net_dev": dev_names,
     "routes": routes}
""")


def test_only_loopback_interface(sandbox):
    seen = sandbox().execute(_INTERFACES)
    assert seen == {"if_nameindex": ["lo"], "proc_net_dev": ["lo"], "routes": []}


def test_no_connection_can_leave_the_sandbox(sandbox):
    # Every probe below runs only after the sandbox proved it has no interface but loopback and no
    # route: then a non-loopback address fails locally (ENETUNREACH) and nothing is sent.
    result = sandbox().execute(code("""
        import errno, socket
        names = sorted(name for _, name in socket.if_nameindex())
        with open("/proc/net/route") as f:
            routes = [line for line in f.read().splitlines()[1:] if line.strip()]
        out = {"isolated": names == ["lo"] and not routes}
        if out["isolated"]:
            def attempt(fn):
                try:
                    fn()
                    return "succeeded"
                except OSError as exc:
                    return f"{type(exc).__name__}:{errno.errorcode.get(exc.errno, exc.errno)}"

            def tcp(host, port):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(5)
                try:
                    s.connect((host, port))
                finally:
                    s.close()

            def udp(host, port):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    s.sendto(b"x", (host, port))
                finally:
                    s.close()

            # Loopback works (nothing listens there, so it is refused): the stack is alive.
            out["loopback"] = attempt(lambda: tcp("127.0.0.1", 9))
            out["tcp"] = attempt(lambda: tcp("10.255.255.1", 80))
            out["udp"] = attempt(lambda: udp("10.255.255.1", 53))
            try:
                socket.getaddrinfo("example.com", 80)
                out["dns"] = "resolved"
            except socket.gaierror as exc:
                out["dns"] = "gaierror"
        out
    """))
    assert result["isolated"] is True, f"the sandbox has a network interface or route: {result}"
    assert result["loopback"] == "ConnectionRefusedError:ECONNREFUSED"
    assert result["tcp"] == "OSError:ENETUNREACH"
    assert result["udp"] == "OSError:ENETUNREACH"
    assert result["dns"] == "gaierror"


# -- file system --------------------------------------------------------------------------------
def test_root_filesystem_is_read_only_and_scratch_is_writable(sandbox):
    result = sandbox().execute(code("""
        import errno, os
        def write(path):
            try:
                with open(path, "w") as f:
                    f.write("probe")
                os.remove(path)
                return "written"
            except OSError as exc:
                return errno.errorcode.get(exc.errno, str(exc.errno))
        {path: write(path) for path in ["/probe", "/usr/probe", "/etc/probe", "/var/probe",
                                       "/usr/local/lib/probe", "/tmp/probe",
                                       os.path.join(os.getcwd(), "probe")]}
    """))
    scratch = {p: result.pop(p) for p in list(result) if p.startswith("/tmp/") or p.startswith("/work/")}
    assert len(scratch) == 2 and set(scratch.values()) == {"written"}, scratch
    for path, outcome in result.items():
        assert outcome in {"EROFS", "EACCES"}, f"{path}: {outcome}"
    # Read-only, not merely unwritable for this user: the kernel refuses before permissions.
    assert result["/probe"] == "EROFS"


def test_host_files_are_not_visible(sandbox, tmp_path):
    marker = tmp_path / "host-secret.txt"
    marker.write_text("host only")
    seen = sandbox().execute(f"import os\n[os.path.exists({str(marker)!r}), os.path.exists({str(tmp_path)!r})]")
    assert seen == [False, False]


# -- identity and privileges ------------------------------------------------------------------------
def test_runs_as_nobody_without_capabilities(sandbox):
    result = sandbox().execute(code("""
        import os
        status = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                status[key] = value.strip()
        try:
            os.setuid(0)
            setuid = "became root"
        except PermissionError:
            setuid = "refused"
        {"ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()], "groups": os.getgroups(),
         "caps": {k: int(status[k], 16) for k in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb")},
         "no_new_privs": status["NoNewPrivs"], "setuid": setuid}
    """))
    assert result["ids"] == [65534] * 4
    assert 0 not in result["groups"]
    assert result["caps"] == {"CapEff": 0, "CapPrm": 0, "CapInh": 0, "CapBnd": 0, "CapAmb": 0}
    assert result["no_new_privs"] == "1"
    assert result["setuid"] == "refused"


def test_docker_socket_is_not_reachable(sandbox):
    result = sandbox().execute(code("""
        import os, socket
        out = {}
        for path in ("/var/run/docker.sock", "/run/docker.sock"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                out[path] = "connected"
            except OSError as exc:
                out[path] = type(exc).__name__
            finally:
                s.close()
        with open("/proc/self/mountinfo") as f:
            out["mounted"] = [line for line in f if "docker.sock" in line]
        out["env"] = sorted(k for k in os.environ if k.startswith("DOCKER"))
        out
    """))
    assert result == {"/var/run/docker.sock": "FileNotFoundError", "/run/docker.sock": "FileNotFoundError",
                      "mounted": [], "env": []}


def test_host_environment_does_not_leak(sandbox, monkeypatch):
    secret = "sandboxkit-docker-hardening-secret-41"
    monkeypatch.setenv("SANDBOXKIT_HOST_SECRET", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    env = sandbox().execute("import os\ndict(os.environ)")
    assert "SANDBOXKIT_HOST_SECRET" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert not any(secret in value for value in env.values())


# -- process and memory limits ------------------------------------------------------------------------
_FORK_UNTIL_REFUSED = code("""
    import os
    release_r, release_w = os.pipe()
    children, refusal = [], None
    try:
        while len(children) < 200:  # a bound, should the limit be missing
            pid = os.fork()
            if pid == 0:  # a child: wait until released, then leave without running anything else
                try:
                    os.close(release_w)
                    os.read(release_r, 1)
                finally:
                    os._exit(0)
            children.append(pid)
    except OSError as exc:
        refusal = type(exc).__name__
    finally:
        os.close(release_w)
        os.close(release_r)
        for pid in children:
            os.waitpid(pid, 0)
    [len(children), refusal]
""")


def test_fork_bomb_hits_the_process_limit(sandbox):
    interp = sandbox(pids_limit=32)
    interp.execute("kept = 'alive'")
    started, refusal = bounded(lambda: interp.execute(_FORK_UNTIL_REFUSED))
    assert refusal == "BlockingIOError"  # fork() -> EAGAIN: the pids limit
    assert 1 <= started < 40
    # The session survives, with its state, once the children are gone.
    assert interp.execute("kept") == "alive"
    assert interp.execute("6 * 7") == 42


def test_real_fork_bomb_leaves_host_and_later_sandboxes_unaffected(sandbox):
    interp = sandbox(pids_limit=32, timeout=3)
    bomb = code("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    with pytest.raises(CodeInterpreterError) as info:
        bounded(lambda: interp.execute(bomb))
    # Either interrupted by the timeout (session survives) or a clear, session-ending error.
    if isinstance(info.value, CodeExecutionError):
        assert "timeout" in str(info.value).lower()
    interp.shutdown()
    host = subprocess.run([sys.executable, "-c", "print('host ok')"], capture_output=True, text=True, check=True)
    assert host.stdout == "host ok\n"
    assert sandbox(pids_limit=32).execute("6 * 7") == 42


def test_memory_bomb_is_killed_and_reported(sandbox):
    interp = sandbox(memory="64m")
    interp.execute("kept = 1")
    with pytest.raises(SandboxDiedError) as info:
        bounded(lambda: interp.execute("hog = bytearray(200 * 1024 * 1024)\nlen(hog)"))
    message = str(info.value)
    assert "out-of-memory" in message
    assert "memory limit (64m)" in message
    assert "new interpreter" in message.lower()
    assert sandbox(memory="64m").execute("6 * 7") == 42


_ORPHANS_AND_ZOMBIES = code("""
    import os, time
    WAIT = WAIT_SECONDS  # seconds to give init to reap the last ones
    def zombies():
        count = 0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                count += stat[stat.rfind(")") + 2] == "Z"
        return count
    # 50 orphans (a child forks a grandchild and exits at once; the grandchild is re-parented to
    # PID 1 and exits): only an init that reaps keeps them from piling up against the pids limit.
    made = 0
    for _ in range(50):
        pid = os.fork()
        if pid == 0:
            try:
                os.fork()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        made += 1
    deadline = time.monotonic() + WAIT
    while zombies() and time.monotonic() < deadline:
        time.sleep(0.05)
    [made, zombies()]
""")


def test_init_reaps_orphaned_zombies(sandbox):
    made, zombies = sandbox(pids_limit=32).execute(_ORPHANS_AND_ZOMBIES.replace("WAIT_SECONDS", "10"))
    assert made == 50
    assert zombies == 0


def test_without_init_orphans_stay_zombies(sandbox):
    # The control for the test above: with init=False the driver is PID 1 and does not reap, so
    # the zombie count the sandbox sees is what proves init's work.
    made, zombies = sandbox(pids_limit=32, init=False).execute(_ORPHANS_AND_ZOMBIES.replace("WAIT_SECONDS", "0"))
    assert made == 50
    assert zombies > 0



# -- the mount table --------------------------------------------------------------------------------
_MOUNTS = code("""
    import os, socket
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            mounts.append({"dev": fields[2], "root": fields[3], "point": fields[4],
                           "options": fields[5].split(","), "fstype": tail[0], "source": tail[1]})
    probes = {}
    for name, probe in (("stat socket", lambda: os.stat("/run/sandboxkit/driver.sock")),
                        ("list", lambda: os.listdir("/run/sandboxkit"))):
        try:
            probes[name] = ["ok", repr(probe())]
        except OSError as exc:
            probes[name] = [type(exc).__name__]
    {"mounts": mounts, "hostname": socket.gethostname(), "probes": probes}
""")

#: Masks the engine lays over sensitive /proc and /sys paths: empty read-only tmpfs mounts, or
#: /dev/null (the container's own /dev tmpfs) bound over a file. They hide, and show nothing.
_MASKED_PREFIXES = ("/proc/", "/sys/")
#: /proc subtrees the engine remounts read-only: the container's own proc, less writable.
_READ_ONLY_PROC = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
#: Files the engine writes for each container and binds in, read-only on a read-only root.
_ENGINE_FILES = {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}
#: sandboxkit's own scratch space.
_SCRATCH = {"/tmp", "/work"}


def mount_is_acceptable(mount: dict, hostname: str, dev_device: str | None) -> str | None:
    """Why a mount inside the container is acceptable, or None when it is not."""
    point, fstype, root, options = mount["point"], mount["fstype"], mount["root"], mount["options"]
    read_only = "ro" in options
    if point == "/" and fstype == "overlay" and read_only:
        return "the image's own file system, read-only"
    if point == "/proc" and fstype == "proc":
        return "the container's proc: its own pid namespace"
    if point in _READ_ONLY_PROC and fstype == "proc" and read_only and root == point[len("/proc"):]:
        return "part of the container's proc, remounted read-only by the engine"
    if point.startswith(_MASKED_PREFIXES) and fstype == "tmpfs" and (read_only and root == "/" or
                                                                     root == "/null" and mount["dev"] == dev_device):
        return "a mask over a sensitive /proc or /sys path (empty tmpfs or /dev/null)"
    if point == "/dev" and fstype == "tmpfs":
        return "the container's own /dev, made by the engine in memory"
    if (point, fstype) in {("/dev/pts", "devpts"), ("/dev/mqueue", "mqueue"), ("/dev/shm", "tmpfs")}:
        return "the container's own terminal, message queue and shared-memory namespaces"
    if point == "/sys" and fstype == "sysfs" and read_only:
        return "sysfs, read-only"
    if point == "/sys/fs/cgroup" and fstype == "tmpfs":
        return "the engine's empty tmpfs holding the cgroup mounts (cgroup v1)"
    if point.startswith("/sys/fs/cgroup") and fstype in {"cgroup", "cgroup2"} and read_only:
        return "the container's own cgroups, read-only"
    if point in _ENGINE_FILES and read_only and f"/containers/{hostname}" in root:
        return "a file the engine generated for this container, bound read-only"
    if point == "/usr/sbin/docker-init" and read_only:
        return "the engine's init binary (init=True), read-only"
    if point in _SCRATCH and fstype == "tmpfs" and {"nosuid", "nodev"} <= set(options):
        return "sandboxkit's scratch space, in memory"
    if point == "/run/sandboxkit" and read_only and "/sandboxkit-channel-" in root and root.endswith("//deleted"):
        return "the socket channel's directory, read-only and already deleted on the host"
    return None


@pytest.mark.parametrize("channel", ["socket", "attach"])
def test_mount_table_holds_nothing_from_the_host(sandbox, channel):
    seen = sandbox(channel=channel).execute(_MOUNTS)
    mounts, hostname = seen["mounts"], seen["hostname"]
    dev = next((m["dev"] for m in mounts if m["point"] == "/dev"), None)
    unexplained = [m for m in mounts if mount_is_acceptable(m, hostname, dev) is None]
    assert not unexplained, f"mounts in the container that nothing explains: {unexplained}"
    assert [m["point"] for m in mounts if m["point"] == "/"] == ["/"]
    channel_mounts = [m for m in mounts if m["point"] == "/run/sandboxkit"]
    if channel == "attach":
        assert channel_mounts == []
    else:
        assert len(channel_mounts) == 1
        # Empty once the driver has connected: the socket is gone, and the directory can't be listed.
        assert seen["probes"]["stat socket"] == ["FileNotFoundError"]
        assert seen["probes"]["list"][0] in {"PermissionError", "FileNotFoundError"} or \
            seen["probes"]["list"] == ["ok", "[]"]
