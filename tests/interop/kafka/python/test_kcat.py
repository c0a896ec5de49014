"""kcat (Debian's package, librdkafka inside): metadata, keyed produce with headers, consume with a
format string, absolute and relative offsets, and the balanced consumer group mode."""

import json
import queue
import shutil
import subprocess
import threading
import time

import pytest
from confluent_kafka import Producer

from kafka_support import WAIT_S, create_topic, produce_all

pytestmark = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed (Debian package kcat)")


def kcat(target, *args, stdin=None, timeout=WAIT_S):
    r = subprocess.run(["kcat", "-b", target.bootstrap, "-m", "10", *args], input=stdin,
                       capture_output=True, timeout=timeout)
    assert r.returncode == 0, "kcat %s exited %d:\n%s" % (" ".join(args), r.returncode, r.stderr.decode())
    return r.stdout.decode()


def kcat_produce(target, topic, lines, *args):
    kcat(target, "-P", "-t", topic, "-K:", *args, stdin=("\n".join(lines) + "\n").encode())


def test_metadata_lists_broker_and_partitions(broker, topic):
    create_topic(broker, topic, partitions=3)
    meta = json.loads(kcat(broker, "-L", "-J", "-t", topic))
    assert [(b["id"], b["name"]) for b in meta["brokers"]] == [(0, broker.bootstrap)]
    [t] = meta["topics"]
    assert t["topic"] == topic and not t.get("error")
    assert sorted(p["partition"] for p in t["partitions"]) == [0, 1, 2]
    for p in t["partitions"]:
        assert p["leader"] == 0 and not p.get("error"), p
    # The plain text listing names the same broker.
    text = kcat(broker, "-L", "-t", topic)
    assert "broker 0 at %s" % broker.bootstrap in text
    assert 'topic "%s" with 3 partitions' % topic in text


def test_produce_with_keys_and_headers_then_consume_from_beginning(broker, topic):
    create_topic(broker, topic, partitions=1)
    kcat_produce(broker, topic, ["k1:v1", "k2:v2", "k3:v3"], "-H", "h1=a", "-H", "h2=b")
    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%k|%h|%o|%p|%s\n")
    assert out.splitlines() == ["k%d|h1=a,h2=b|%d|0|v%d" % (i + 1, i, i + 1) for i in range(3)]


def test_absolute_and_relative_offsets(broker, topic):
    create_topic(broker, topic, partitions=1)
    kcat_produce(broker, topic, ["k:m%d" % i for i in range(10)])
    fmt = ["-f", "%o:%s\n"]
    assert kcat(broker, "-C", "-t", topic, "-p", "0", "-o", "7", "-e", *fmt).splitlines() == \
        ["7:m7", "8:m8", "9:m9"]
    assert kcat(broker, "-C", "-t", topic, "-p", "0", "-o", "-2", "-e", *fmt).splitlines() == ["8:m8", "9:m9"]
    assert kcat(broker, "-C", "-t", topic, "-p", "0", "-o", "9", "-c", "1", *fmt).splitlines() == ["9:m9"]
    # -o end with -e: nothing left to read.
    assert kcat(broker, "-C", "-t", topic, "-p", "0", "-o", "end", "-e", *fmt) == ""


def test_keys_go_to_one_partition_each(broker, topic):
    create_topic(broker, topic, partitions=3)
    kcat_produce(broker, topic, ["key%d:%d" % (i % 5, i) for i in range(50)])
    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%p %k %s\n").splitlines()
    assert len(out) == 50
    where = {}
    for line in out:
        p, k, _ = line.split()
        where.setdefault(k, set()).add(p)
    assert all(len(ps) == 1 for ps in where.values()), where


def test_balanced_consumer_group_consumes_everything(broker, topic):
    create_topic(broker, topic, partitions=3)
    n = 60
    kcat_produce(broker, topic, ["k%d:v%d" % (i, i) for i in range(n)])
    group = "kcat-" + topic
    proc = subprocess.Popen(
        ["kcat", "-b", broker.bootstrap, "-u", "-G", group, "-X", "auto.offset.reset=earliest",
         "-f", "%p:%o:%s\n", topic],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = queue.Queue()

    def read():
        for raw in iter(proc.stdout.readline, b""):
            lines.put(raw.decode().strip())

    threading.Thread(target=read, daemon=True).start()
    got = set()
    deadline = time.monotonic() + WAIT_S * 2
    try:
        while len(got) < n:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                rc = proc.poll()
                proc.terminate()
                raise AssertionError("kcat -G got %d of %d records (exit %r); stderr:\n%s" % (
                    len(got), n, rc, proc.communicate(timeout=10)[1].decode()[-3000:]))
            try:
                got.add(lines.get(timeout=min(left, 0.5)).split(":")[-1])
            except queue.Empty:
                pass
    finally:
        proc.terminate()
        proc.wait(10)
    assert got == {"v%d" % i for i in range(n)}


def test_query_offset_by_timestamp(broker, topic):
    """kcat -Q: ListOffsets by timestamp (records produced with explicit CreateTime timestamps)."""
    create_topic(broker, topic, partitions=1)
    base = int(time.time() * 1000) - 60_000
    produce_all(Producer(broker.ck()), topic, [(None, b"m%d" % i, None, base + i * 1000) for i in range(6)])
    out = kcat(broker, "-Q", "-t", "%s:0:%d" % (topic, base + 4000))
    assert out.split() == [topic, "[0]", "offset", "4"], out
    out = kcat(broker, "-Q", "-t", "%s:0:%d" % (topic, base + 3500))
    assert out.split() == [topic, "[0]", "offset", "4"], out
