"""Debian's mosquitto clients (mosquitto_pub / mosquitto_sub) against the broker under test."""

import queue
import shutil
import subprocess
import threading
import time

import pytest

from mqtt_support import V5, V311, WAIT_S, sub_opts  # noqa: F401

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")),
    reason="mosquitto-clients not installed (apt-get install -y mosquitto-clients)",
)


def auth(broker):
    return ["-h", broker.host, "-p", str(broker.port), "-u", broker.user, "-P", broker.password]


def pub(broker, *args):
    r = subprocess.run(["mosquitto_pub", *auth(broker), *args], capture_output=True, text=True, timeout=WAIT_S)
    assert r.returncode == 0, "mosquitto_pub %s: %s%s" % (args, r.stdout, r.stderr)


class Sub:
    """mosquitto_sub -d running in the background; lines read by a thread."""

    def __init__(self, broker, *args):
        # stdbuf: mosquitto_sub's stdout is block-buffered on a pipe; the test reads it live.
        line_buffered = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
        self.proc = subprocess.Popen([*line_buffered, "mosquitto_sub", *auth(broker), "-d", *args],
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pred, what, timeout=WAIT_S):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError("mosquitto_sub: no %s within %ss; output: %s" % (what, timeout, self.seen)) \
                    from None
            if line is None:
                raise AssertionError("mosquitto_sub exited %s before %s; output: %s" % (
                    self.proc.wait(), what, self.seen))
            self.seen.append(line)
            if pred(line):
                return line

    def subscribed(self):
        self.wait_for(lambda line: "SUBACK" in line, "SUBACK")
        return self

    def message(self):
        return self.wait_for(lambda line: line.startswith("=M "), "message")[3:]

    def finish(self):
        try:
            return self.proc.wait(WAIT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def sub(broker):
    made = []

    def make(*args):
        s = Sub(broker, *args)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


FMT = ["-F", "=M %t|%q|%r|%p"]


@pytest.mark.parametrize("proto", ["mqttv311", "mqttv5", "mqttv31"])
def test_pub_seen_by_sub(broker, sub, uid, proto):
    s = sub("-V", proto, "-t", uid + "/#", "-C", "1", *FMT).subscribed()
    pub(broker, "-V", proto, "-t", uid + "/x", "-m", "hello from mosquitto_pub")
    assert s.message() == "%s/x|0|0|hello from mosquitto_pub" % uid
    assert s.finish() == 0


def test_qos1(broker, sub, uid):
    s = sub("-t", uid, "-q", "1", "-C", "1", *FMT).subscribed()
    pub(broker, "-t", uid, "-q", "1", "-m", "q1")
    assert s.message() == "%s|1|0|q1" % uid


def test_qos2(broker, sub, uid):
    s = sub("-t", uid, "-q", "2", "-C", "1", *FMT).subscribed()
    pub(broker, "-t", uid, "-q", "2", "-m", "q2")
    assert s.message() == "%s|2|0|q2" % uid


def test_retained(broker, sub, uid):
    pub(broker, "-t", uid, "-q", "1", "-r", "-m", "kept")
    s = sub("-t", uid, "-q", "1", "-C", "1", "--retained-only", *FMT)
    assert s.message() == "%s|1|1|kept" % uid
    assert s.finish() == 0
    pub(broker, "-t", uid, "-q", "1", "-r", "-n")  # -n: empty payload clears
    s2 = sub("-t", uid, "-W", "1", "--retained-only", *FMT).subscribed()
    assert s2.finish() == 27  # -W timeout with nothing received
    assert not [line for line in s2.seen if line.startswith("=M ")]


def test_v5_user_properties_and_content_type(broker, sub, uid):
    s = sub("-V", "mqttv5", "-t", uid, "-q", "1", "-C", "1", "-F", "=M %t|%C|%P|%p").subscribed()
    pub(broker, "-V", "mqttv5", "-t", uid, "-q", "1", "-m", "with props",
        "-D", "publish", "user-property", "site", "berlin",
        "-D", "publish", "content-type", "text/plain")
    assert s.message() == "%s|text/plain|site:berlin|with props" % uid


def test_v5_user_properties_reach_paho(broker, mq, uid):
    c = mq(V5)
    c.subscribe(uid, options=sub_opts(qos=1))
    pub(broker, "-V", "mqttv5", "-t", uid, "-q", "1", "-m", "x",
        "-D", "publish", "user-property", "k1", "v1", "-D", "publish", "user-property", "k2", "v2",
        "-D", "publish", "correlation-data", "c-42", "-D", "publish", "response-topic", uid + "/r")
    m = c.get()
    assert m.properties.UserProperty == [("k1", "v1"), ("k2", "v2")]
    assert (m.properties.CorrelationData, m.properties.ResponseTopic) == (b"c-42", uid + "/r")


def test_paho_publish_seen_by_mosquitto_sub(broker, mq, sub, uid):
    s = sub("-t", uid, "-q", "2", "-C", "3", *FMT).subscribed()
    p = mq(V311)
    for q in (0, 1, 2):
        p.publish(uid, b"paho-%d" % q, qos=q)
    assert sorted(s.message() for _ in range(3)) == ["%s|%d|0|paho-%d" % (uid, q, q) for q in (0, 1, 2)]


def test_will_from_mosquitto_sub(broker, mq, sub, uid):
    watcher = mq(V311)
    watcher.subscribe(uid + "/will", 1)
    s = sub("-t", uid + "/x", "--will-topic", uid + "/will", "--will-payload", "sub died", "--will-qos", "1")
    s.subscribed()
    s.proc.kill()  # SIGKILL: no DISCONNECT
    assert watcher.get().payload == b"sub died"


def test_persistent_session_with_client_id(broker, sub, uid):
    """-c (clean session off) with -i: messages published while offline arrive on return."""
    cid = "mosq-" + uid.replace("/", "-")[-20:]
    s = sub("-i", cid, "-c", "-q", "1", "-t", uid, "-C", "1", *FMT).subscribed()
    pub(broker, "-t", uid, "-q", "1", "-m", "first")
    assert s.message() == "%s|1|0|first" % uid
    assert s.finish() == 0
    pub(broker, "-t", uid, "-q", "1", "-m", "while away")
    s2 = sub("-i", cid, "-c", "-q", "1", "-t", uid, "-C", "1", *FMT)
    assert s2.message() == "%s|1|0|while away" % uid



