"""Shared helpers for the AMQP 0-9-1 interoperability suite.

The suite runs against either a FerryMQ server that it starts itself (the
`ferrymq` binary from FERRYMQ_BIN) or an already running broker named by
AMQP_URL (that is how it is checked against RabbitMQ). Every helper here waits
on a condition with a deadline; none sleeps and hopes.
"""

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import uuid

import pika
import pika.exceptions
import pytest

needs_own_server = pytest.mark.skipif(
    bool(os.environ.get("AMQP_URL")), reason="kills and restarts the server: FerryMQ only (AMQP_URL is set)"
)

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LISTENING = re.compile(r"AMQP listening on (\S+?):(\d+)\b")
READY_TIMEOUT_S = 30.0


class Broker:
    """Where the broker under test listens, and how to reach it with each client."""

    def __init__(self, host, port, user="guest", password="guest", vhost="/"):
        self.host, self.port = host, int(port)
        self.user, self.password, self.vhost = user, password, vhost

    @classmethod
    def from_url(cls, url):
        parts = urllib.parse.urlsplit(url)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        vhost = urllib.parse.unquote(path) if path else "/"
        return cls(
            parts.hostname or "127.0.0.1",
            parts.port or 5672,
            urllib.parse.unquote(parts.username or "guest"),
            urllib.parse.unquote(parts.password or "guest"),
            vhost,
        )

    def url(self, user=None, password=None, vhost=None):
        """A canonical amqp:// URL (vhost always spelled out, '/' as %2F)."""
        q = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
        return "amqp://%s:%s@%s:%d/%s" % (
            q(user if user is not None else self.user),
            q(password if password is not None else self.password),
            self.host,
            self.port,
            q(vhost if vhost is not None else self.vhost),
        )

    def params(self, **overrides):
        kw = dict(
            host=self.host,
            port=self.port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.user, self.password),
            connection_attempts=1,
            socket_timeout=10,
            blocked_connection_timeout=30,
        )
        kw.update(overrides)
        return pika.ConnectionParameters(**kw)

    def connect(self, **overrides):
        return pika.BlockingConnection(self.params(**overrides))

    def env(self):
        """Environment for subprocesses (the tutorials) pointing at this broker."""
        env = dict(os.environ)
        env.update(
            AMQP_URL=self.url(),
            AMQP_HOST=self.host,
            AMQP_PORT=str(self.port),
            AMQP_USER=self.user,
            AMQP_PASSWORD=self.password,
            AMQP_VHOST=self.vhost,
            PYTHONUNBUFFERED="1",
        )
        return env


class FerryServer:
    """One `ferrymq serve` process on its own data directory, AMQP on a free port."""

    def __init__(self, binary, data_dir, log_path):
        self.binary, self.data_dir, self.log_path = binary, str(data_dir), str(log_path)
        self.proc = None
        self.port = None
        self._lines = []
        self._cond = threading.Condition()

    def start(self):
        assert self.proc is None or self.proc.poll() is not None
        self._lines = []
        self.port = None
        log = open(self.log_path, "a", encoding="utf-8")
        log.write("==== start %s\n" % time.strftime("%H:%M:%S"))
        log.flush()
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--data-dir", self.data_dir, "--set", "amqp.port=0", *self._other_ports()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self._env(),
        )
        proc = self.proc

        def drain():
            for raw in iter(proc.stderr.readline, b""):
                line = ANSI.sub("", raw.decode("utf-8", "replace"))
                log.write(line)
                log.flush()
                with self._cond:
                    self._lines.append(line)
                    self._cond.notify_all()
            with self._cond:
                self._cond.notify_all()
            log.close()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        ready = False
        with self._cond:
            while True:
                for line in self._lines:
                    m = LISTENING.search(line)
                    if m and self.port is None:
                        self.port = int(m.group(2))
                    if "FerryMQ ready" in line:
                        ready = True
                if ready and self.port is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0 or proc.poll() is not None:
                    self.kill()
                    raise RuntimeError(
                        "ferrymq did not become ready (exit %r); log:\n%s"
                        % (proc.poll(), "".join(self._lines)[-4000:])
                    )
                self._cond.wait(min(left, 0.2))
        return Broker("127.0.0.1", self.port)

    def _other_ports(self):
        """`--set SECTION.port=0` for every other listener the binary has (HTTP, later MQTT, Kafka):
        several servers run at once here (the session's and the durability tests' own)."""
        shown = subprocess.run(
            [self.binary, "config", "show"], capture_output=True, text=True, timeout=30,
            env=self._env(),
        ).stdout
        section, flags = None, []
        for line in shown.splitlines():
            m = re.match(r"^\[([a-z0-9_]+)\]\s*$", line)
            if m:
                section = m.group(1)
            elif section and section != "amqp" and re.match(r"^port\s*=", line):
                flags += ["--set", "%s.port=0" % section]
        return flags

    @staticmethod
    def _env():
        # FERRYMQ_* variables are configuration keys to the server, and it rejects unknown ones:
        # pass on none of the runner's own (FERRYMQ_BIN).
        return {**{k: v for k, v in os.environ.items() if k != "FERRYMQ_BIN"}, "NO_COLOR": "1"}

    def stop(self, timeout=30):
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("ferrymq did not exit within %ss of SIGTERM" % timeout)

    def kill(self):
        """kill -9, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, n=4000):
        with self._cond:
            return "".join(self._lines)[-n:]


def unique(prefix="it"):
    return "interop.%s.%s" % (prefix, uuid.uuid4().hex[:12])


class Names:
    """Unique queue/exchange names for one test, deleted again when it ends."""

    def __init__(self, broker, test_name):
        self.broker = broker
        self.tag = re.sub(r"[^A-Za-z0-9_]+", "_", test_name)[-24:]
        self.queues, self.exchanges = [], []

    def q(self, what="q"):
        name = unique("%s.%s" % (self.tag, what))
        self.queues.append(name)
        return name

    def x(self, what="x"):
        name = unique("%s.%s" % (self.tag, what))
        self.exchanges.append(name)
        return name

    def cleanup(self):
        """Best effort: a failure to delete is reported by the tests that delete, not here."""
        pending = [("q", n) for n in self.queues] + [("x", n) for n in self.exchanges]
        conn = ch = None
        for kind, name in pending:
            try:
                if conn is None or not conn.is_open:
                    conn = self.broker.connect()
                    ch = None
                if ch is None or not ch.is_open:
                    ch = conn.channel()
                if kind == "q":
                    ch.queue_delete(name)
                else:
                    ch.exchange_delete(name)
            except Exception:  # noqa: BLE001 - the broker may also be gone (durability tests)
                ch = None
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()


def shortstr(text):
    """reply-text is a shortstr: RabbitMQ cuts a longer text to 252 bytes and "..."."""
    raw = text.encode("utf-8")
    if len(raw) <= 255:
        return text
    return raw[:252].decode("utf-8", "ignore") + "..."


@contextlib.contextmanager
def channel_error(code, text=None, contains=None):
    """Expects the block to end with the broker closing the channel with `code`."""
    try:
        yield
    except pika.exceptions.ChannelClosedByBroker as e:
        assert (e.reply_code, e.reply_text) == (code, shortstr(text) if text is not None else e.reply_text)
        if contains is not None:
            assert contains in e.reply_text, e.reply_text
        return
    raise AssertionError("expected channel error %d, the operation succeeded" % code)


@contextlib.contextmanager
def connection_error(code, text=None, contains=None):
    """Expects the block to end with the broker closing the connection with `code`."""
    try:
        yield
    except pika.exceptions.ConnectionClosedByBroker as e:
        assert (e.reply_code, e.reply_text) == (code, shortstr(text) if text is not None else e.reply_text)
        if contains is not None:
            assert contains in e.reply_text, e.reply_text
        return
    raise AssertionError("expected connection error %d, the operation succeeded" % code)


def consume(ch, queue, n, timeout=10.0, auto_ack=False, ack=False, **kw):
    """Consumes exactly n messages (or fails at the deadline); returns (method, props, body) triples.

    Unacked messages stay unacked unless `ack` (they are returned to the queue
    when the caller's channel closes or it cancels)."""
    got = []
    deadline = time.monotonic() + timeout
    for method, props, body in ch.consume(queue, auto_ack=auto_ack, inactivity_timeout=0.05, **kw):
        if method is not None:
            got.append((method, props, body))
            if ack:
                ch.basic_ack(method.delivery_tag)
        if len(got) >= n:
            break
        if time.monotonic() > deadline:
            break
    ch.cancel()
    assert len(got) == n, "wanted %d messages from %s, got %d within %ss" % (n, queue, len(got), timeout)
    return got


def pump_for(conn, seconds):
    """Runs the I/O loop for `seconds` (only where a test asserts that nothing more arrives)."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        conn.process_data_events(time_limit=min(left, 0.05))


def get_all(ch, queue, timeout=10.0, expect=None, auto_ack=True):
    """basic.get until `expect` messages were read (or, with expect=None, until get-empty)."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            got.append((method, props, body))
            if expect is not None and len(got) >= expect:
                return got
            continue
        if expect is None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("wanted %d messages from %s, got %d" % (expect, queue, len(got)))
        ch.connection.process_data_events(time_limit=0.05)


def wait_until(pred, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


def pump_until(conn, pred, timeout=10.0, what="condition"):
    """Runs the I/O loop of one BlockingConnection (or of each in a list) until pred() holds."""
    conns = conn if isinstance(conn, (list, tuple)) else [conn]
    step = 0.05 if len(conns) == 1 else 0.01
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        for c in conns:
            c.process_data_events(time_limit=step)


def queue_exists(broker, name):
    conn = broker.connect()
    try:
        conn.channel().queue_declare(name, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code in (404, 405), e
        return e.reply_code == 405  # 405: exists, exclusive to another connection
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def exchange_exists(broker, name):
    conn = broker.connect()
    try:
        conn.channel().exchange_declare(name, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404, e
        return False
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def message_count(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


def confirms(ch):
    """confirm.select once per channel (pika logs an error on a second call)."""
    if not ch._delivery_confirmation:
        ch.confirm_delivery()
