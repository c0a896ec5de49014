"""pika's asynchronous SelectConnection: publisher confirms (acks, nacks, multiple) and consumer cancel."""

import functools

import pika
import pika.exceptions


class Async:
    """Runs a SelectConnection's ioloop until `done` or a deadline; failures re-raised in the test."""

    def __init__(self, broker, on_channel, timeout=20):
        self.error = None
        self.finished = False
        self.closing = False
        self.conn = pika.SelectConnection(
            broker.params(),
            on_open_callback=lambda c: c.channel(on_open_callback=self._guard(on_channel)),
            on_open_error_callback=lambda c, e: self.fail(e),
            on_close_callback=self._on_close,
        )
        self.timer = self.conn.ioloop.call_later(
            timeout, lambda: self.fail(AssertionError("timed out after %ss" % timeout))
        )

    def _on_close(self, conn, reason):
        if not self.closing:
            self.fail(reason)
        conn.ioloop.stop()

    def _guard(self, fn):
        @functools.wraps(fn)
        def run(*a, **kw):
            try:
                return fn(*a, **kw)
            except BaseException as e:  # surface it in the test thread
                self.fail(e)
        return run

    def guard(self, fn):
        return self._guard(fn)

    def done(self):
        self.finished = True
        self.conn.ioloop.stop()

    def fail(self, e):
        if self.error is None:
            self.error = e
        self.conn.ioloop.stop()

    def run(self):
        self.conn.ioloop.start()
        if self.conn.is_open:
            self.closing = True
            self.conn.close()
            self.conn.ioloop.start()
        self.conn.ioloop.remove_timeout(self.timer)
        if self.error is not None:
            raise self.error
        assert self.finished


def outcomes(frames):
    """Per-tag outcome from basic.ack/nack frames, resolving `multiple`; no tag settled twice."""
    outcome = {}
    for kind, tag, multiple in frames:
        if multiple:
            new = [t for t in range(1, tag + 1) if t not in outcome]
            assert new, "a multiple confirm up to %d settled nothing new" % tag
        else:
            assert tag not in outcome, "tag %d confirmed twice" % tag
            new = [tag]
        for t in new:
            outcome[t] = kind
    return outcome


def expand(frames, last_tag):
    outcome = outcomes(frames)
    assert sorted(outcome) == list(range(1, last_tag + 1)), outcome
    return outcome


def test_select_confirms_with_multiple(broker, names):
    q = names.q()
    n = 200
    frames = []

    def on_channel(ch):
        def on_confirm(frame):
            m = frame.method
            frames.append(("ack" if isinstance(m, pika.spec.Basic.Ack) else "nack", m.delivery_tag, m.multiple))
            if len(outcomes(frames)) == n:
                a.done()

        def on_declared(_):
            ch.confirm_delivery(a.guard(on_confirm), callback=a.guard(on_selected))

        def on_selected(_):
            for i in range(n):
                ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(delivery_mode=2))

        ch.queue_declare(q, durable=True, callback=a.guard(on_declared))

    a = Async(broker, on_channel)
    a.run()
    outcome = expand(frames, n)
    assert set(outcome.values()) == {"ack"}
    # Tags only grow; with a multiple ack covering many at once, fewer frames than messages is fine.
    tags = [t for _, t, _ in frames]
    assert tags == sorted(tags)


def test_select_confirms_nack_on_overflow(broker, names):
    q = names.q()
    frames = []

    def on_channel(ch):
        def on_confirm(frame):
            m = frame.method
            frames.append(("ack" if isinstance(m, pika.spec.Basic.Ack) else "nack", m.delivery_tag, m.multiple))
            if len(outcomes(frames)) == 6:
                a.done()

        def on_selected(_):
            for i in range(6):
                ch.basic_publish("", q, b"%d" % i)

        ch.queue_declare(
            q,
            arguments={"x-max-length": 2, "x-overflow": "reject-publish"},
            callback=a.guard(lambda _: ch.confirm_delivery(a.guard(on_confirm), callback=a.guard(on_selected))),
        )

    a = Async(broker, on_channel)
    a.run()
    assert expand(frames, 6) == {1: "ack", 2: "ack", 3: "nack", 4: "nack", 5: "nack", 6: "nack"}


def test_select_consume_and_server_cancel(broker, names):
    q = names.q()
    got, cancels = [], []

    def on_channel(ch):
        def on_message(c, method, props, body):
            got.append(body)
            c.basic_ack(method.delivery_tag)
            if len(got) == 3:
                # Delete the queue under the consumer: the broker sends basic.cancel.
                c.queue_delete(q)

        def on_cancel(frame):
            cancels.append(frame.method.consumer_tag)
            a.done()

        def on_consume_ok(frame):
            for i in range(3):
                ch.basic_publish("", q, b"%d" % i)

        def on_declared(_):
            ch.add_on_cancel_callback(a.guard(on_cancel))
            ch.basic_consume(q, a.guard(on_message), consumer_tag="sel-1", callback=a.guard(on_consume_ok))

        ch.queue_declare(q, callback=a.guard(on_declared))

    a = Async(broker, on_channel)
    a.run()
    assert got == [b"0", b"1", b"2"]
    assert cancels == ["sel-1"]
