"""Shared helpers for the Kafka interoperability suite (issue #7).

The suite starts FerryMQ itself (the `ferrymq` binary from FERRYMQ_BIN, every listener on port 0,
`kafka.group_initial_rebalance_delay_ms=0`) and reads the Kafka listener's address from its log
line `Kafka listening on 127.0.0.1:PORT`. Tests that need a server configured differently (no
topic auto-creation, SASL) or that kill it start one of their own. Every helper waits on a
condition with a deadline; none sleeps and hopes, except where a test asserts that something does
NOT happen within a grace period (named GRACE_S).

Clients: confluent-kafka (librdkafka 2.x), kafka-python 2.x, aiokafka, kcat (Debian), kafkajs
(node/), raw sockets speaking the Kafka wire format (`Raw`), and pika/requests for the AMQP and
HTTP sides of cross-protocol tests.
"""

import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid

ANSI = re.compile(r"\x1b\[[0-9;]*m")
READY_TIMEOUT_S = 30.0
WAIT_S = 15.0  # the deadline for anything that must happen
GRACE_S = 0.5  # how long a test watches for something that must NOT happen

# Kafka error codes (org.apache.kafka.common.protocol.Errors)
OFFSET_OUT_OF_RANGE = 1
UNKNOWN_TOPIC_OR_PARTITION = 3
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
SASL_AUTHENTICATION_FAILED = 58

# API keys
PRODUCE, FETCH, LIST_OFFSETS, METADATA, API_VERSIONS = 0, 1, 2, 3, 18


def unique(prefix="it"):
    return "%s%s" % (prefix, uuid.uuid4().hex[:12])


def wait_until(pred, timeout=WAIT_S, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Where the broker is


class Target:
    """Where a FerryMQ under test listens (Kafka, AMQP, HTTP) and the credentials clients use."""

    def __init__(self, host, kafka_port, amqp_port=None, http_port=None, user="guest", password="guest",
                 sasl=False):
        self.host, self.kafka_port = host, int(kafka_port)
        self.amqp_port, self.http_port = amqp_port, http_port
        self.user, self.password = user, password
        self.sasl = sasl

    @property
    def bootstrap(self):
        return "%s:%d" % (self.host, self.kafka_port)

    @property
    def http(self):
        return "http://%s:%d" % (self.host, self.http_port)

    def env(self):
        """Environment for subprocesses (node --test, kcat)."""
        env = dict(os.environ)
        env.update(KAFKA_BOOTSTRAP=self.bootstrap, KAFKA_USER=self.user, KAFKA_PASSWORD=self.password)
        return env

    def ck(self, **extra):
        """A confluent-kafka configuration for this target: ck(**{"group.id": "g"})."""
        conf = {"bootstrap.servers": self.bootstrap, "client.id": "ferrymq-interop"}
        conf.update(extra)
        return conf


class FerryServer:
    """One `ferrymq serve` process on its own data directory, every listener on a free port.

    Logs read: "FerryMQ ready", "Kafka listening on <addr>", "AMQP listening on <addr>",
    "http listening on <addr>". `settings` are extra `--set KEY=VALUE` pairs."""

    LISTENING = re.compile(r"\b(Kafka|MQTT|AMQP|http) listening on (\S+?):(\d+)\b")
    BASE = {
        "amqp.port": "0",
        "http.port": "0",
        "mqtt.port": "0",
        "kafka.port": "0",
        # Kafka's default (3 s) delays every first join of a group: the suite does not wait for it.
        "kafka.group_initial_rebalance_delay_ms": "0",
    }

    def __init__(self, binary, data_dir, log_path, settings=None):
        self.binary, self.data_dir, self.log_path = binary, str(data_dir), str(log_path)
        self.settings = dict(self.BASE)
        self.settings.update(settings or {})
        self.proc = None
        self.ports = {}
        self._lines = []
        self._cond = threading.Condition()

    def start(self):
        assert self.proc is None or self.proc.poll() is not None
        self._lines = []
        self.ports = {}
        log = open(self.log_path, "a", encoding="utf-8")
        log.write("==== start %s %r\n" % (time.strftime("%H:%M:%S"), self.settings))
        log.flush()
        flags = []
        for k, v in self.settings.items():
            flags += ["--set", "%s=%s" % (k, v)]
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--data-dir", self.data_dir, *flags, *self._other_port_flags()],
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
        with self._cond:
            while True:
                ready = False
                for line in self._lines:
                    m = self.LISTENING.search(line)
                    if m:
                        self.ports.setdefault(m.group(1).lower(), int(m.group(3)))
                    if "FerryMQ ready" in line:
                        ready = True
                if ready:
                    break
                left = deadline - time.monotonic()
                if left <= 0 or proc.poll() is not None:
                    self.kill()
                    raise RuntimeError(
                        "ferrymq did not become ready (exit %r); log:\n%s"
                        % (proc.poll(), "".join(self._lines)[-4000:])
                    )
                self._cond.wait(min(left, 0.2))
        if "kafka" not in self.ports:
            self.kill()
            raise RuntimeError(
                "ferrymq is ready but logged no 'Kafka listening on <addr>' line (no Kafka listener?); log:\n%s"
                % "".join(self._lines)[-4000:]
            )
        return self.target()

    def target(self):
        return Target(
            "127.0.0.1",
            self.ports["kafka"],
            amqp_port=self.ports.get("amqp"),
            http_port=self.ports.get("http"),
            sasl=bool(self.settings.get("kafka.sasl_mechanisms")),
        )

    def _other_port_flags(self):
        """`--set SECTION.port=0` for any further listener section the binary shows (several
        servers run at once here)."""
        flags = []
        with contextlib.suppress(Exception):
            shown = subprocess.run(
                [self.binary, "config", "show"], capture_output=True, text=True, timeout=30, env=self._env()
            ).stdout
            section = None
            for line in shown.splitlines():
                m = re.match(r"^\[([a-z0-9_]+)\]\s*$", line)
                if m:
                    section = m.group(1)
                elif section and "%s.port" % section not in self.settings and re.match(r"^port\s*=", line):
                    flags += ["--set", "%s.port=0" % section]
        return flags

    @staticmethod
    def _env():
        # FERRYMQ_* variables are configuration keys to the server, and it rejects unknown ones.
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
            raise AssertionError("server did not exit within %ss of SIGTERM" % timeout)

    def kill(self):
        """kill -9, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, n=4000):
        with self._cond:
            return "".join(self._lines)[-n:]


# ---------------------------------------------------------------------------------------------
# confluent-kafka helpers


def ck_raise(err):
    """Raise a KafkaError (from a message or a callback) as an assertion with its name."""
    raise AssertionError("kafka error %s (%d): %s" % (err.name(), err.code(), err.str()))


def produce_all(producer, topic, records, timeout=WAIT_S * 2):
    """Produce (key, value, headers, timestamp_ms) tuples (trailing items optional) and wait for
    every delivery report. Returns the delivered messages in produce order; fails on any error."""
    reports = [None] * len(records)

    def cb(i):
        def on_delivery(err, msg):
            reports[i] = (err, msg)
        return on_delivery

    for i, r in enumerate(records):
        key, value = r[0], r[1]
        kw = {}
        if len(r) > 2 and r[2] is not None:
            kw["headers"] = r[2]
        if len(r) > 3 and r[3] is not None:
            kw["timestamp"] = r[3]
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=cb(i), **kw)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(timeout)
    assert left == 0, "%d messages not delivered within %ss" % (left, timeout)
    out = []
    for i, rep in enumerate(reports):
        assert rep is not None, "no delivery report for record %d" % i
        err, msg = rep
        if err is not None:
            ck_raise(err)
        out.append(msg)
    return out


def consume_n(consumer, n, timeout=WAIT_S, ignore_eof=True):
    """Poll a confluent Consumer until n messages arrived; fails on an error event."""
    from confluent_kafka import KafkaError

    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        assert left > 0, "got %d of %d messages within %ss" % (len(got), n, timeout)
        for m in consumer.consume(num_messages=min(500, n - len(got)), timeout=min(left, 0.2)):
            if m.error():
                if ignore_eof and m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                ck_raise(m.error())
            got.append(m)
    return got


def expect_no_more(consumer, within=GRACE_S):
    from confluent_kafka import KafkaError

    deadline = time.monotonic() + within
    extra = []
    while time.monotonic() < deadline:
        for m in consumer.consume(num_messages=100, timeout=0.05):
            if m.error() and m.error().code() == KafkaError._PARTITION_EOF:
                continue
            extra.append(m)
    return extra


def create_topic(target, name, partitions=1, config=None, timeout=WAIT_S):
    """Creates a topic with the confluent AdminClient and waits until its metadata shows it."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(target.ck())
    fs = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                       config=config or {})], operation_timeout=timeout, request_timeout=timeout)
    fs[name].result(timeout)
    wait_until(lambda: name in admin.list_topics(timeout=timeout).topics
               and len(admin.list_topics(topic=name, timeout=timeout).topics[name].partitions) == partitions,
               what="topic %s in metadata" % name)
    return name


# ---------------------------------------------------------------------------------------------
# Raw Kafka wire format


class Closed(Exception):
    pass


def kstr(s):
    """A nullable STRING (int16 length)."""
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def uvarint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def compact_str(s):
    b = s.encode()
    return uvarint(len(b) + 1) + b


class Raw:
    """A raw TCP connection to the Kafka listener: sizes, headers and bodies by hand."""

    def __init__(self, target, timeout=WAIT_S):
        self.sock = socket.create_connection((target.host, target.kafka_port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def request(self, api_key, api_version, correlation_id, body=b"", client_id="raw", flexible_header=False):
        """Sends one request: header v1 (or v2 with an empty tagged-field section)."""
        header = struct.pack(">hhi", api_key, api_version, correlation_id) + kstr(client_id)
        if flexible_header:
            header += b"\x00"
        msg = header + body
        self.send(struct.pack(">i", len(msg)) + msg)

    def _read(self, n, deadline):
        while len(self.buf) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise Closed("connection closed after %d bytes" % len(self.buf))
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, timeout=WAIT_S):
        """One response frame (everything after the size)."""
        deadline = time.monotonic() + timeout
        (size,) = struct.unpack(">i", self._read(4, deadline))
        return self._read(size, deadline)

    def expect_closed(self, timeout=WAIT_S):
        """The server closes the connection (EOF or reset) within the deadline; anything it sends
        before is returned."""
        deadline = time.monotonic() + timeout
        got = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("connection still open after %ss (received %r)" % (timeout, got[:64]))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return got
            except socket.timeout:
                continue
            if not chunk:
                return got
            got += chunk

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()


def parse_api_versions_v0(frame):
    """(correlation_id, error_code, {api_key: (min, max)}) of an ApiVersions response in the v0
    layout (response header v0, then error_code, then an int32-counted array)."""
    corr, err, n = struct.unpack_from(">ihi", frame, 0)
    pos = 10
    apis = {}
    assert 0 <= n < 1000, "implausible ApiVersions array length %d" % n
    for _ in range(n):
        k, lo, hi = struct.unpack_from(">hhh", frame, pos)
        pos += 6
        apis[k] = (lo, hi)
    return corr, err, apis
