"""Runs RabbitMQ's six Python tutorials (../tutorials) as subprocesses and checks what they print."""

import contextlib
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time

import pika.exceptions
import pytest

TUTORIALS = pathlib.Path(__file__).resolve().parent.parent / "tutorials"
LINE_TIMEOUT_S = 15


class Program:
    """One tutorial program; its stdout read line by line on a thread."""

    def __init__(self, broker, script, *args):
        self.name = script
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(TUTORIALS / script), *args],
            cwd=TUTORIALS,
            env=broker.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = []
        self._q = queue.Queue()
        self._stderr = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._q), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, None), daemon=True).start()

    def _pump(self, stream, q):
        for line in stream:
            if q is None:
                self._stderr.append(line)
            else:
                q.put(line.rstrip("\n"))
        if q is not None:
            q.put(None)

    def expect(self, line, timeout=LINE_TIMEOUT_S):
        """Waits for an exact line; returns the lines read up to and including it."""
        deadline = time.monotonic() + timeout
        while True:
            if line in self.lines:
                return self.lines
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                got = self._q.get(timeout=left)
            except queue.Empty:
                break
            if got is None:
                self._q.put(None)
                break
            self.lines.append(got)
        raise AssertionError(
            "%s: no line %r within %ss; stdout %r, stderr %r, exit %r"
            % (self.name, line, timeout, self.lines, "".join(self._stderr)[-2000:], self.proc.poll())
        )

    def poll(self, seconds):
        """Reads whatever lines arrive within `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got = self._q.get(timeout=left)
            except queue.Empty:
                return
            if got is None:
                self._q.put(None)
                return
            self.lines.append(got)

    def finish(self, timeout=30):
        """Waits for a program that ends by itself; returns (exit status, stdout lines)."""
        rc = self.proc.wait(timeout)
        self._drain()
        return rc, self.lines

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout)
        self._drain()
        return rc

    def _drain(self):
        """After exit: reads the rest of stdout (up to its end marker)."""
        deadline = time.monotonic() + 5
        while (left := deadline - time.monotonic()) > 0:
            try:
                got = self._q.get(timeout=left)
            except queue.Empty:
                return
            if got is None:
                self._q.put(None)  # keep the end marker for later calls
                return
            self.lines.append(got)

    @property
    def stderr(self):
        return "".join(self._stderr)


def run(broker, script, *args):
    p = Program(broker, script, *args)
    rc, lines = p.finish()
    assert rc == 0, "%s exited %r: %s" % (script, rc, p.stderr)
    return lines


@pytest.fixture
def programs():
    started = []
    yield lambda *a: started.append(Program(*a)) or started[-1]
    for p in started:
        p.stop(signal.SIGKILL)


@pytest.fixture
def fresh(broker):
    """The tutorials use fixed queue names: start from empty ones (a previous run may have left some)."""

    def clear(*queues):
        c = broker.connect()
        try:
            for q in queues:
                ch = c.channel()
                with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                    ch.queue_delete(q)
        finally:
            c.close()

    return clear


def test_tutorial_1_hello_world(broker, programs, fresh):
    fresh("hello")
    receiver = programs(broker, "receive.py")
    receiver.expect(" [*] Waiting for messages. To exit press CTRL+C")
    assert run(broker, "send.py") == [" [x] Sent 'Hello World!'"]
    receiver.expect(" [x] Received b'Hello World!'")
    # Ctrl-C: the tutorial prints "Interrupted" and exits 0.
    assert receiver.stop(signal.SIGINT) == 0
    assert receiver.lines[-1] == "Interrupted"


def test_tutorial_2_work_queues(broker, programs, fresh):
    fresh("task_queue")
    w1, w2 = programs(broker, "worker.py"), programs(broker, "worker.py")
    for w in (w1, w2):
        w.expect(" [*] Waiting for messages. To exit press CTRL+C")
    # Both consumers must be attached before publishing, for a fair split to be checked.
    c = broker.connect()
    deadline = time.monotonic() + LINE_TIMEOUT_S
    while c.channel().queue_declare("task_queue", passive=True).method.consumer_count < 2:
        assert time.monotonic() < deadline, "workers did not start consuming"
        time.sleep(0.05)
    c.close()
    tasks = ["First message.", "Second message", "Third message", "Fourth message.", "Fifth message"]
    for t in tasks:
        assert run(broker, "new_task.py", *t.split()) == [" [x] Sent %s" % t]
    deadline = time.monotonic() + LINE_TIMEOUT_S
    while True:
        received = [ln[len(" [x] Received "):] for w in (w1, w2) for ln in w.lines if ln.startswith(" [x] Received ")]
        done = sum(ln == " [x] Done" for w in (w1, w2) for ln in w.lines)
        if len(received) == len(tasks) and done == len(tasks):
            break
        assert time.monotonic() < deadline, (w1.lines, w2.lines)
        for w in (w1, w2):
            w.poll(0.05)
    assert sorted(received) == sorted(tasks)
    # prefetch_count=1 spreads the work: while one worker sleeps on a task, the other takes the next.
    assert all(any(ln.startswith(" [x] Received ") for ln in w.lines) for w in (w1, w2))


def test_tutorial_3_publish_subscribe(broker, programs):
    r1, r2 = programs(broker, "receive_logs.py"), programs(broker, "receive_logs.py")
    for r in (r1, r2):
        r.expect(" [*] Waiting for logs. To exit press CTRL+C")
    assert run(broker, "emit_log.py") == [" [x] Sent info: Hello World!"]
    assert run(broker, "emit_log.py", "warning:", "disk", "low") == [" [x] Sent warning: disk low"]
    for r in (r1, r2):
        r.expect(" [x] b'info: Hello World!'")
        r.expect(" [x] b'warning: disk low'")
        r.stop()
        assert r.lines[1:] == [" [x] b'info: Hello World!'", " [x] b'warning: disk low'"]


def test_tutorial_4_routing(broker, programs):
    usage = Program(broker, "receive_logs_direct.py")
    rc, _ = usage.finish()
    assert rc == 1 and "Usage:" in usage.stderr
    errors = programs(broker, "receive_logs_direct.py", "warning", "error")
    infos = programs(broker, "receive_logs_direct.py", "info")
    for r in (errors, infos):
        r.expect(" [*] Waiting for logs. To exit press CTRL+C")
    assert run(broker, "emit_log_direct.py", "error", "Run.", "Run.", "Or", "it", "will", "explode.") == [
        " [x] Sent error:Run. Run. Or it will explode."
    ]
    assert run(broker, "emit_log_direct.py", "info", "all", "fine") == [" [x] Sent info:all fine"]
    assert run(broker, "emit_log_direct.py", "debug", "nobody") == [" [x] Sent debug:nobody"]
    assert run(broker, "emit_log_direct.py", "warning", "last") == [" [x] Sent warning:last"]
    assert run(broker, "emit_log_direct.py") == [" [x] Sent info:Hello World!"]
    errors.expect(" [x] warning:b'last'")
    infos.expect(" [x] info:b'Hello World!'")
    for r in (errors, infos):
        r.stop()
    assert errors.lines[1:] == [" [x] error:b'Run. Run. Or it will explode.'", " [x] warning:b'last'"]
    assert infos.lines[1:] == [" [x] info:b'all fine'", " [x] info:b'Hello World!'"]


def test_tutorial_5_topics(broker, programs):
    critical = programs(broker, "receive_logs_topic.py", "*.critical")
    kern = programs(broker, "receive_logs_topic.py", "kern.*")
    everything = programs(broker, "receive_logs_topic.py", "#")
    for r in (critical, kern, everything):
        r.expect(" [*] Waiting for logs. To exit press CTRL+C")
    sends = [
        ("cron.critical", "cron failed"),
        ("kern.info", "booted"),
        ("a.b.c", "deep"),
        ("kern.critical", "A critical kernel error"),
    ]
    for key, msg in sends:
        assert run(broker, "emit_log_topic.py", key, *msg.split()) == [" [x] Sent %s:%s" % (key, msg)]
    for r in (critical, kern, everything):
        r.expect(" [x] kern.critical:b'A critical kernel error'")
        r.stop()
    assert critical.lines[1:] == [" [x] cron.critical:b'cron failed'", " [x] kern.critical:b'A critical kernel error'"]
    assert kern.lines[1:] == [" [x] kern.info:b'booted'", " [x] kern.critical:b'A critical kernel error'"]
    assert everything.lines[1:] == [" [x] %s:b'%s'" % kv for kv in sends]


def test_tutorial_6_rpc(broker, programs, fresh):
    fresh("rpc_queue")
    server = programs(broker, "rpc_server.py")
    server.expect(" [x] Awaiting RPC requests")
    assert run(broker, "rpc_client.py") == [" [x] Requesting fib(30)", " [.] Got 832040"]
    server.expect(" [.] fib(30)")
    # A second client in a row: the server keeps serving.
    assert run(broker, "rpc_client.py")[-1] == " [.] Got 832040"
