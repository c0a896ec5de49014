"""Shared helpers for the MQTT interoperability suite (issue #6).

The suite runs against either a FerryMQ server that it starts itself (the
`ferrymq` binary from FERRYMQ_BIN, MQTT on `mqtt.port=0`) or an already running
broker named by MQTT_HOST / MQTT_PORT / MQTT_WS_URL (that is how it is checked
against Mosquitto: see ../mosquitto.sh). Every helper waits on a condition with a
deadline; none sleeps and hopes, except where a test asserts that something does
NOT happen within a grace period (named GRACE_S).

Three kinds of client:
- `Mqtt`: a real paho-mqtt 2.x client (v3.1, v3.1.1 or v5, TCP or WebSocket), with its
  callbacks turned into queues;
- `Raw`: a raw socket speaking MQTT packet by packet (for bad input, stopping a QoS 2 flow
  half-way, withholding acks, reading exact flags and reason codes);
- the Debian mosquitto clients, run as processes (test_mosquitto_clients.py).
"""

import contextlib
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

ANSI = re.compile(r"\x1b\[[0-9;]*m")
READY_TIMEOUT_S = 30.0
WAIT_S = 10.0  # the deadline for anything that must happen
GRACE_S = 0.5  # how long a test watches for something that must NOT happen

V31, V311, V5 = "v31", "v311", "v5"
PAHO_PROTOCOL = {V31: paho.MQTTv31, V311: paho.MQTTv311, V5: paho.MQTTv5}
LEVEL = {V31: 3, V311: 4, V5: 5}


def external():
    """An already running broker (MQTT_HOST): FerryMQ-only tests skip."""
    return bool(os.environ.get("MQTT_HOST"))


def broker_name():
    """'ferrymq' when the suite starts FerryMQ itself, else MQTT_BROKER_NAME (mosquitto.sh sets
    'mosquitto'), else 'external'."""
    if not external():
        return "ferrymq"
    return os.environ.get("MQTT_BROKER_NAME", "external")


ferrymq_only = pytest.mark.skipif(
    external(), reason="FerryMQ only: needs FerryMQ's AMQP/HTTP listeners (MQTT_HOST is set)"
)


both_versions = pytest.mark.parametrize("version", [V311, V5])


def versions_xfail_on(name, reason, versions=(V311,)):
    """parametrize("version", [V311, V5]) with the given versions xfail on broker `name`."""
    return pytest.mark.parametrize("version", [
        pytest.param(v, marks=xfail_on(name, reason)) if v in versions else v for v in (V311, V5)])


def xfail_on(name, reason, strict=True):
    """The test follows the specification; the named reference broker deviates from it."""
    return pytest.mark.xfail(broker_name() == name, reason="%s deviates: %s" % (name, reason), strict=strict)


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
    """Where the broker under test listens (MQTT over TCP, MQTT over WebSocket, and for FerryMQ
    its AMQP and HTTP listeners), and the credentials every client uses."""

    def __init__(self, host, port, ws_url=None, amqp_port=None, http_port=None, user=None, password=None):
        self.host, self.port = host, int(port)
        self.ws_url = ws_url
        self.amqp_port, self.http_port = amqp_port, http_port
        self.user = user if user is not None else os.environ.get("MQTT_USER", "guest")
        self.password = password if password is not None else os.environ.get("MQTT_PASSWORD", "guest")

    @classmethod
    def from_env(cls):
        return cls(
            os.environ["MQTT_HOST"],
            int(os.environ.get("MQTT_PORT", "1883")),
            os.environ.get("MQTT_WS_URL") or None,
        )

    @property
    def ws(self):
        """(host, port, path) of the WebSocket endpoint, or None."""
        if not self.ws_url:
            return None
        u = urllib.parse.urlsplit(self.ws_url)
        return u.hostname, u.port or 80, u.path or "/mqtt"

    def env(self):
        """Environment for subprocesses (node --test, mosquitto clients)."""
        env = dict(os.environ)
        env.update(
            MQTT_HOST=self.host,
            MQTT_PORT=str(self.port),
            MQTT_URL="mqtt://%s:%d" % (self.host, self.port),
            MQTT_USER=self.user,
            MQTT_PASSWORD=self.password,
        )
        if self.ws_url:
            env["MQTT_WS_URL"] = self.ws_url
        return env


class FerryServer:
    """One `ferrymq serve` process on its own data directory, every listener on a free port.

    Logs to read (as the AMQP suite does): "FerryMQ ready", "MQTT listening on <addr>",
    "AMQP listening on <addr>", "http listening on <addr>"; MQTT over WebSocket is served by
    the HTTP listener at /mqtt."""

    LISTENING = re.compile(r"\b(MQTT|AMQP|http) listening on (\S+?):(\d+)\b")

    def __init__(self, binary, data_dir, log_path):
        self.binary, self.data_dir, self.log_path = binary, str(data_dir), str(log_path)
        self.proc = None
        self.ports = {}
        self._lines = []
        self._cond = threading.Condition()

    def start(self):
        assert self.proc is None or self.proc.poll() is not None
        self._lines = []
        self.ports = {}
        log = open(self.log_path, "a", encoding="utf-8")
        log.write("==== start %s\n" % time.strftime("%H:%M:%S"))
        log.flush()
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--data-dir", self.data_dir, *self._port_flags()],
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
        if "mqtt" not in self.ports:
            self.kill()
            raise RuntimeError(
                "ferrymq is ready but logged no 'MQTT listening on <addr>' line (no MQTT listener?); log:\n%s"
                % "".join(self._lines)[-4000:]
            )
        return self.target()

    def target(self):
        http = self.ports.get("http")
        return Target(
            "127.0.0.1",
            self.ports["mqtt"],
            ws_url="ws://127.0.0.1:%d/mqtt" % http if http else None,
            amqp_port=self.ports.get("amqp"),
            http_port=http,
        )

    def _port_flags(self):
        """`--set SECTION.port=0` for amqp, http and mqtt, and for every other listener section the
        binary shows (Kafka, later): several servers run at once here."""
        flags = ["--set", "amqp.port=0", "--set", "http.port=0", "--set", "mqtt.port=0", "--set", "kafka.port=0"]
        with contextlib.suppress(Exception):
            shown = subprocess.run(
                [self.binary, "config", "show"], capture_output=True, text=True, timeout=30, env=self._env()
            ).stdout
            section = None
            for line in shown.splitlines():
                m = re.match(r"^\[([a-z0-9_]+)\]\s*$", line)
                if m:
                    section = m.group(1)
                elif section and section not in ("amqp", "http", "mqtt") and re.match(r"^port\s*=", line):
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MOSQUITTO_CONF_IN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mosquitto.conf.in")


def mosquitto_conf(data_dir, port, ws_port, password_file):
    """../mosquitto.conf.in filled in (mosquitto.sh fills the same template with sed)."""
    with open(MOSQUITTO_CONF_IN) as f:
        text = f.read()
    for k, v in (("@DATA_DIR@", data_dir), ("@PORT@", port), ("@WS_PORT@", ws_port), ("@PASSWORD_FILE@", password_file),
                 ("@USER@", pwd.getpwuid(os.getuid()).pw_name)):
        text = text.replace(k, str(v))
    return text


def write_mosquitto_files(root, port, ws_port, user="guest", password="guest"):
    """A config, a password file (user guest/guest, like FerryMQ's default user) and a
    persistence directory under `root`; returns the config path."""
    root = str(root)
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    pw = os.path.join(root, "passwd")
    with open(pw, "w"):
        pass
    subprocess.run(["mosquitto_passwd", "-b", pw, user, password], check=True, capture_output=True)
    os.chmod(pw, 0o600)
    conf = os.path.join(root, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(mosquitto_conf(os.path.join(root, "data"), port, ws_port, pw))
    return conf


class MosquittoServer:
    """A Mosquitto of a test's own (restart tests against the reference broker, when
    MQTT_OWN_BROKER=mosquitto): same interface as FerryServer, fixed ports across restarts."""

    def __init__(self, root, log_path):
        self.root, self.log_path = str(root), str(log_path)
        self.port, self.ws_port = free_port(), free_port()
        self.conf = write_mosquitto_files(self.root, self.port, self.ws_port)
        self.proc = None

    def start(self):
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", self.conf],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
        log.close()

        def listening():
            if self.proc.poll() is not None:
                raise RuntimeError("mosquitto exited %r; log:\n%s" % (self.proc.returncode, self.log_tail()))
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
            return False

        wait_until(listening, timeout=READY_TIMEOUT_S, what="mosquitto listening")
        return self.target()

    def target(self):
        return Target("127.0.0.1", self.port, ws_url="ws://127.0.0.1:%d/mqtt" % self.ws_port)

    def stop(self, timeout=30):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, n=4000):
        with contextlib.suppress(OSError), open(self.log_path) as f:
            return f.read()[-n:]
        return ""


# ---------------------------------------------------------------------------------------------
# paho-mqtt


def props(packet_type, **kw):
    """paho Properties: props(PacketTypes.PUBLISH, UserProperty=[("a", "1")], ContentType="x")."""
    p = Properties(packet_type)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def prop(properties, name, default=None):
    if properties is None:
        return default
    return getattr(properties, name, default)


class Mqtt:
    """A paho-mqtt 2.x client (VERSION2 callbacks) whose callbacks feed queues.

    Never reconnects by itself (reconnect_on_failure=False): a test sees every disconnection."""

    def __init__(self, target, version=V5, client_id=None, clean=True, session_expiry=None, keepalive=30,
                 transport="tcp", user=True, password=None, will=None, connect_props=None, manual_ack=False,
                 tag="c"):
        self.target, self.version = target, version
        self.client_id = unique("%s-" % tag) if client_id is None else client_id
        self.clean, self.session_expiry, self.keepalive = clean, session_expiry, keepalive
        self.transport = transport
        kw = {}
        if version != V5:
            kw["clean_session"] = clean
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=PAHO_PROTOCOL[version],
            transport=transport, reconnect_on_failure=False, manual_ack=manual_ack, **kw,
        )
        if transport == "websockets":
            host, port, path = target.ws
            self.c.ws_set_options(path=path)  # paho offers subprotocol "mqtt"
            self.host, self.port = host, port
        else:
            self.host, self.port = target.host, target.port
        if user is True:
            self.c.username_pw_set(target.user, target.password)
        elif user:
            self.c.username_pw_set(user, password)
        if will is not None:
            self.c.will_set(**will)
        self.connect_props = connect_props
        self.messages = queue.Queue()
        self.connacks = queue.Queue()
        self.disconnects = queue.Queue()
        self._subacks, self._unsubacks, self._pubacks = {}, {}, {}
        self._lock = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_publish = self._on_publish
        self.connack = None
        self.running = False

    # callbacks (paho's network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connacks.put((reason_code, flags, properties))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnects.put((reason_code, properties, flags))

    def _on_message(self, client, userdata, message):
        self.messages.put(message)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._lock:
            self._subacks[mid] = ([rc.value for rc in reason_codes], properties)
            self._lock.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self._lock:
            self._unsubacks[mid] = ([rc.value for rc in reason_codes] if reason_codes else [], properties)
            self._lock.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._lock:
            self._pubacks[mid] = (reason_code.value if reason_code is not None else 0, properties)
            self._lock.notify_all()

    def _wait_for(self, table, mid, what):
        deadline = time.monotonic() + WAIT_S
        with self._lock:
            while mid not in table:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("%s: no %s for mid %d within %ss" % (self.client_id, what, mid, WAIT_S))
                self._lock.wait(left)
            return table.pop(mid)

    # operations
    def connect(self, expect_ok=True):
        """Connects and waits for CONNACK; returns (reason code as int, session_present, properties)."""
        kw = {}
        if self.version == V5:
            p = self.connect_props or Properties(PacketTypes.CONNECT)
            if self.session_expiry is not None:
                p.SessionExpiryInterval = self.session_expiry
            kw = dict(clean_start=self.clean, properties=p)
        self.c.connect(self.host, self.port, keepalive=self.keepalive, **kw)
        self.c.loop_start()
        self.running = True
        try:
            rc, flags, properties = self.connacks.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError("%s: no CONNACK within %ss" % (self.client_id, WAIT_S)) from None
        self.connack = (rc.value, flags.session_present, properties)
        if expect_ok:
            assert rc.value == 0, "%s: CONNACK refused: %s" % (self.client_id, rc)
        return self.connack

    def subscribe(self, topic, qos=0, options=None, properties=None):
        """Subscribes (one filter, or a list of (filter, qos or SubscribeOptions)); waits for
        SUBACK and returns its reason codes (granted QoS) as ints."""
        if isinstance(topic, list):
            rc, mid = self.c.subscribe(topic, properties=properties)
        elif options is not None:
            rc, mid = self.c.subscribe(topic, options=options, properties=properties)
        else:
            rc, mid = self.c.subscribe(topic, qos, properties=properties)
        assert rc == 0, "subscribe not sent: %s" % rc
        codes, _ = self._wait_for(self._subacks, mid, "SUBACK")
        return codes

    def unsubscribe(self, topic, properties=None):
        rc, mid = self.c.unsubscribe(topic, properties=properties)
        assert rc == 0
        codes, _ = self._wait_for(self._unsubacks, mid, "UNSUBACK")
        return codes

    def publish(self, topic, payload=b"", qos=0, retain=False, properties=None, wait=True):
        """Publishes; at QoS 1/2 (and wait) waits for the end of the flow and returns the v5
        reason code of PUBACK/PUBREC (0 for v3)."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == 0, "publish not sent: %s" % info.rc
        if qos == 0 or not wait:
            return info
        rc, _ = self._wait_for(self._pubacks, info.mid, "PUBACK/PUBCOMP")
        return rc

    def get(self, timeout=WAIT_S, what="a message"):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("%s: no message within %ss (waiting for %s)" % (self.client_id, timeout, what)) \
                from None

    def get_n(self, n, timeout=WAIT_S):
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < n:
            left = deadline - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(left, 0.001)))
            except queue.Empty:
                raise AssertionError("%s: wanted %d messages, got %d: %r" % (
                    self.client_id, n, len(got), [(m.topic, m.payload) for m in got])) from None
        return got

    def expect_none(self, within=GRACE_S):
        try:
            m = self.messages.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError("%s: unexpected message %s %r (retain=%s)" % (self.client_id, m.topic, m.payload, m.retain))

    def wait_disconnect(self, timeout=WAIT_S):
        """Waits for the connection to end; returns (reason code as int, properties, from_server)."""
        try:
            rc, properties, flags = self.disconnects.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("%s: still connected after %ss" % (self.client_id, timeout)) from None
        return rc.value if hasattr(rc, "value") else int(rc), properties, flags.is_disconnect_packet_from_server

    def disconnect(self, reasoncode=None, properties=None):
        """A clean DISCONNECT; waits until the network loop ended."""
        if self.running:
            self.c.disconnect(reasoncode=reasoncode, properties=properties)
            self.c.loop_stop()
            self.running = False

    def kill(self):
        """Ends the connection without DISCONNECT (an abnormal disconnection: the will is due)."""
        sock = self.c.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                if self.transport == "websockets":
                    sock = sock._socket  # paho's WebsocketWrapper
                sock.shutdown(socket.SHUT_RDWR)
        self.wait_disconnect()
        self.c.loop_stop()
        self.running = False

    def close(self):
        with contextlib.suppress(Exception):
            if self.running:
                self.c.disconnect()
        with contextlib.suppress(Exception):
            self.c.loop_stop()
        self.running = False


def sub_opts(qos=0, no_local=False, rap=False, rh=0):
    return SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=rap, retainHandling=rh)


# ---------------------------------------------------------------------------------------------
# Raw MQTT over a socket

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15
NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP",
         8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP",
         14: "DISCONNECT", 15: "AUTH"}
PAHO_TYPE = {CONNACK: PacketTypes.CONNACK, PUBLISH: PacketTypes.PUBLISH, PUBACK: PacketTypes.PUBACK,
             PUBREC: PacketTypes.PUBREC, PUBREL: PacketTypes.PUBREL, PUBCOMP: PacketTypes.PUBCOMP,
             SUBACK: PacketTypes.SUBACK, UNSUBACK: PacketTypes.UNSUBACK, DISCONNECT: PacketTypes.DISCONNECT,
             AUTH: PacketTypes.AUTH}


def vbi(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def s16(b):
    return struct.pack("!H", len(b)) + b


def utf8(s):
    return s16(s.encode("utf-8") if isinstance(s, str) else s)


def packet(ptype, flags, body):
    return bytes([(ptype << 4) | flags]) + vbi(len(body)) + body


def packed(packet_type, kw):
    """The v5 property block (length included) for `kw`; an empty block for None."""
    return props(packet_type, **(kw or {})).pack()


class Closed(Exception):
    """The server closed the connection."""


class Pkt:
    """A decoded packet from the server."""

    def __init__(self, ptype, flags, body, version):
        self.type, self.flags, self.body = ptype, flags, body
        self.name = NAMES.get(ptype, str(ptype))
        self.props = None
        self.rc = 0
        self.pid = None
        v5 = version == V5
        if ptype == CONNACK:
            self.session_present = bool(body[0] & 1)
            self.rc = body[1]
            if v5 and len(body) > 2:
                self.props = self._props(body[2:])
        elif ptype == PUBLISH:
            self.dup, self.qos, self.retain = bool(flags & 8), (flags >> 1) & 3, bool(flags & 1)
            n = struct.unpack("!H", body[:2])[0]
            self.topic_bytes = body[2:2 + n]
            self.topic = self.topic_bytes.decode("utf-8", "replace")
            i = 2 + n
            if self.qos:
                self.pid = struct.unpack("!H", body[i:i + 2])[0]
                i += 2
            if v5:
                self.props, used = Properties(PacketTypes.PUBLISH).unpack(body[i:])
                i += used
            self.payload = body[i:]
        elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, SUBACK):
            self.pid = struct.unpack("!H", body[:2])[0]
            if ptype in (SUBACK, UNSUBACK):
                i = 2
                if v5:
                    self.props, used = Properties(PAHO_TYPE[ptype]).unpack(body[2:])
                    i += used
                self.codes = list(body[i:])
            else:
                if len(body) > 2:
                    self.rc = body[2]
                if v5 and len(body) > 3:
                    self.props = self._props(body[3:])
        elif ptype in (DISCONNECT, AUTH):
            if body:
                self.rc = body[0]
            if v5 and len(body) > 1:
                self.props = self._props(body[1:])

    def _props(self, buf):
        p, _ = Properties(PAHO_TYPE[self.type]).unpack(buf)
        return p

    def __repr__(self):
        extra = ""
        if self.type == PUBLISH:
            extra = " topic=%r qos=%d dup=%s retain=%s pid=%s payload=%r" % (
                self.topic, self.qos, self.dup, self.retain, self.pid, self.payload[:40])
        elif self.pid is not None:
            extra = " pid=%d rc=0x%02x" % (self.pid, self.rc)
        else:
            extra = " rc=0x%02x" % self.rc
        return "<%s%s>" % (self.name, extra)


class Raw:
    """MQTT spoken by hand over one TCP connection (no automatic acks, no keep-alive pings)."""

    def __init__(self, target, version=V5, timeout=WAIT_S):
        self.target, self.version = target, version
        self.sock = socket.create_connection((target.host, target.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.closed = False

    # sending
    def send(self, data):
        self.sock.sendall(data)

    def connect(self, client_id=None, clean=True, keepalive=60, user=True, password=None, will=None,
                properties=None, level=None, expect=CONNACK):
        """Sends CONNECT; returns the CONNACK Pkt (or raises Closed). `will`: dict(topic, payload,
        qos, retain, properties); `properties`: dict of v5 CONNECT properties."""
        self.client_id = unique("raw-") if client_id is None else client_id
        v5 = self.version == V5
        level = LEVEL[self.version] if level is None else level
        name = b"MQIsdp" if level == 3 else b"MQTT"
        flags = 0x02 if clean else 0
        payload = utf8(self.client_id)
        if will is not None:
            flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
            if v5:
                payload += packed(PacketTypes.WILLMESSAGE, will.get("properties"))
            payload += utf8(will["topic"]) + s16(will.get("payload", b""))
        if user is True:
            user, password = self.target.user, self.target.password
        if user:
            flags |= 0x80
            payload += utf8(user)
            if password is not None:
                flags |= 0x40
                payload += utf8(password)
        body = utf8(name) + bytes([level, flags]) + struct.pack("!H", keepalive)
        if v5:
            body += packed(PacketTypes.CONNECT, properties)
        self.send(packet(CONNECT, 0, body + payload))
        if expect is None:
            return None
        return self.expect(expect)

    def publish(self, topic, payload=b"", qos=0, retain=False, pid=None, dup=False, properties=None,
                raw_topic=None):
        flags = (8 if dup else 0) | (qos << 1) | (1 if retain else 0)
        body = s16(raw_topic) if raw_topic is not None else utf8(topic)
        if qos:
            body += struct.pack("!H", pid)
        if self.version == V5:
            body += packed(PacketTypes.PUBLISH, properties)
        self.send(packet(PUBLISH, flags, body + payload))

    def ack(self, ptype, pid, rc=None):
        body = struct.pack("!H", pid)
        if rc is not None:
            body += bytes([rc])
        self.send(packet(ptype, 2 if ptype == PUBREL else 0, body))

    def subscribe(self, pid, filters, properties=None):
        """filters: [(filter, options byte)]; returns the SUBACK Pkt."""
        body = struct.pack("!H", pid)
        if self.version == V5:
            body += packed(PacketTypes.SUBSCRIBE, properties)
        for f, opts in filters:
            body += utf8(f) + bytes([opts])
        self.send(packet(SUBSCRIBE, 2, body))
        return self.expect(SUBACK)

    def disconnect(self, rc=None, properties=None):
        body = b""
        if self.version == V5 and (rc is not None or properties):
            body = bytes([rc or 0]) + (packed(PacketTypes.DISCONNECT, properties) if properties else b"")
        self.send(packet(DISCONNECT, 0, body))
        self.close()

    def ping(self):
        self.send(packet(PINGREQ, 0, b""))
        return self.expect(PINGRESP)

    # receiving
    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no packet in time")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            raise Closed()
        self.buf += data

    def recv(self, timeout=WAIT_S):
        """The next packet (Pkt); raises Closed at end of stream, socket.timeout at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                n, mult, i = 0, 1, 1
                complete = False
                while i < len(self.buf) and i <= 4:
                    b = self.buf[i]
                    n += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        complete = True
                        break
                if complete and len(self.buf) >= i + n:
                    first, body = self.buf[0], self.buf[i:i + n]
                    self.buf = self.buf[i + n:]
                    return Pkt(first >> 4, first & 0x0F, body, self.version)
            self._fill(deadline)

    def expect(self, ptype, timeout=WAIT_S):
        try:
            p = self.recv(timeout)
        except socket.timeout:
            raise AssertionError("%s: no %s within %ss" % (self.version, NAMES[ptype], timeout)) from None
        assert p.type == ptype, "expected %s, got %r" % (NAMES[ptype], p)
        return p

    def expect_closed(self, timeout=WAIT_S):
        """Reads until the server closes the connection; returns the packets received before."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                got.append(self.recv(max(deadline - time.monotonic(), 0.001)))
            except Closed:
                return got
            except socket.timeout:
                raise AssertionError("the server did not close the connection within %ss (got %r)" % (
                    timeout, got)) from None

    def expect_silence(self, within=GRACE_S):
        try:
            p = self.recv(within)
        except socket.timeout:
            return
        raise AssertionError("unexpected packet %r" % p)

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()

    def abort(self):
        """Closes the socket at once (RST, no DISCONNECT): an abnormal disconnection."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()


def still_serving(target, version=V311):
    """The broker still serves other clients: a fresh client subscribes, publishes, receives."""
    c = Mqtt(target, version=version, tag="alive")
    try:
        c.connect()
        topic = "it/alive/%s" % unique("")
        assert c.subscribe(topic, 1) == [1]
        c.publish(topic, b"ping", qos=1)
        m = c.get()
        assert (m.topic, m.payload) == (topic, b"ping")
    finally:
        c.close()
