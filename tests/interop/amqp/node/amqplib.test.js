// AMQP 0-9-1 interoperability with amqplib (Node's built-in test runner).
// The broker comes from AMQP_URL (run.sh sets it: FerryMQ started for the run, or RabbitMQ).
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const amqp = require('amqplib');

const URL = process.env.AMQP_URL;
if (!URL) throw new Error('AMQP_URL is not set (run tests/interop/amqp/run.sh)');
const DEADLINE_MS = 10000;

const opened = [];
async function connect(url = URL) {
  const conn = await amqp.connect(url);
  conn.on('error', () => {}); // connection errors are asserted where they are expected
  opened.push(conn);
  return conn;
}
after(async () => {
  for (const c of opened) await c.close().catch(() => {});
});

function unique(what) {
  return `interop.node.${what}.${crypto.randomUUID().slice(0, 12)}`;
}

// A channel whose 'error' events are swallowed (the failed operation's promise carries the error).
async function channel(conn, confirm = false) {
  const ch = confirm ? await conn.createConfirmChannel() : await conn.createChannel();
  ch.on('error', () => {});
  return ch;
}

function withDeadline(promise, what, ms = DEADLINE_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Collects deliveries of a consumer; wait(n) resolves once n have arrived.
function collector() {
  const got = [];
  let waiters = [];
  return {
    got,
    push(msg) {
      got.push(msg);
      waiters = waiters.filter(([n, resolve]) => (got.length >= n ? (resolve(got), false) : true));
    },
    wait(n, what = `${n} deliveries`) {
      if (got.length >= n) return Promise.resolve(got);
      return withDeadline(new Promise((resolve) => waiters.push([n, resolve])), what);
    },
  };
}

async function cleanup(conn, queues = [], exchanges = []) {
  const ch = await channel(conn);
  for (const q of queues) await ch.deleteQueue(q).catch(() => {});
  for (const x of exchanges) await ch.deleteExchange(x).catch(() => {});
  await ch.close().catch(() => {});
}

test('connect: capabilities RabbitMQ clients rely on', async () => {
  const conn = await connect();
  const caps = conn.connection.serverProperties.capabilities;
  for (const cap of ['publisher_confirms', 'exchange_exchange_bindings', 'basic.nack', 'consumer_cancel_notify',
    'per_consumer_qos', 'direct_reply_to', 'authentication_failure_close']) {
    assert.equal(caps[cap], true, cap);
  }
});

test('declare, bind, publish and consume with ack; server-generated consumer tag', async () => {
  const conn = await connect();
  const ch = await channel(conn);
  const x = unique('x');
  const q = unique('q');
  await ch.assertExchange(x, 'topic', { durable: false });
  const ok = await ch.assertQueue(q, { durable: false });
  assert.deepEqual(ok, { queue: q, messageCount: 0, consumerCount: 0 });
  await ch.bindQueue(q, x, 'logs.*');
  const c = collector();
  const { consumerTag } = await ch.consume(q, (msg) => {
    c.push(msg);
    ch.ack(msg);
  });
  assert.match(consumerTag, /^amq\.ctag-/);
  const headers = { s: 'v', n: 42, neg: -1, big: 2 ** 40, f: 1.5, b: true, nested: { a: [1, 'two'] } };
  ch.publish(x, 'logs.info', Buffer.from('one'), {
    contentType: 'text/plain', headers, correlationId: 'c1', replyTo: 'r', messageId: 'm1',
    timestamp: 1700000000, type: 'kind', appId: 'node', priority: 4, persistent: true, expiration: '60000',
  });
  ch.publish(x, 'other.info', Buffer.from('not routed'));
  ch.publish(x, 'logs.warn', Buffer.from('two'));
  const [m1, m2] = await c.wait(2);
  assert.equal(m1.content.toString(), 'one');
  assert.equal(m2.content.toString(), 'two');
  assert.equal(m1.fields.routingKey, 'logs.info');
  assert.equal(m1.fields.exchange, x);
  assert.equal(m1.fields.consumerTag, consumerTag);
  assert.equal(m1.fields.redelivered, false);
  const p = m1.properties;
  assert.equal(p.contentType, 'text/plain');
  assert.equal(p.correlationId, 'c1');
  assert.equal(p.replyTo, 'r');
  assert.equal(p.messageId, 'm1');
  assert.equal(p.timestamp, 1700000000);
  assert.equal(p.type, 'kind');
  assert.equal(p.appId, 'node');
  assert.equal(p.priority, 4);
  assert.equal(p.deliveryMode, 2);
  assert.equal(p.expiration, '60000');
  assert.deepEqual(p.headers, headers);
  await ch.cancel(consumerTag);
  assert.equal((await ch.checkQueue(q)).consumerCount, 0);
  await cleanup(conn, [q], [x]);
});

test('confirm channel: acks, waitForConfirms, and a nack from reject-publish overflow', async () => {
  const conn = await connect();
  const ch = await channel(conn, true);
  const q = unique('q');
  await ch.assertQueue(q, { durable: true, arguments: { 'x-max-length': 3, 'x-overflow': 'reject-publish' } });
  const results = await Promise.all(
    [0, 1, 2, 3, 4].map(
      (i) => new Promise((resolve) => {
        ch.sendToQueue(q, Buffer.from(String(i)), { persistent: true }, (err) => resolve(err ? 'nack' : 'ack'));
      }),
    ),
  );
  assert.deepEqual(results, ['ack', 'ack', 'ack', 'nack', 'nack']);
  await ch.purgeQueue(q);
  for (let i = 0; i < 50; i++) ch.sendToQueue(q, Buffer.from('x'));
  await assert.rejects(withDeadline(ch.waitForConfirms(), 'confirms')); // some of the 50 were nacked
  await ch.purgeQueue(q);
  ch.sendToQueue(q, Buffer.from('fits'));
  await withDeadline(ch.waitForConfirms(), 'confirms');
  assert.equal((await ch.checkQueue(q)).messageCount, 1);
  await cleanup(conn, [q]);
});

test('prefetch limits unacked deliveries until acks', async () => {
  const conn = await connect();
  const ch = await channel(conn);
  const q = unique('q');
  await ch.assertQueue(q, { durable: false });
  for (let i = 0; i < 5; i++) ch.sendToQueue(q, Buffer.from(String(i)));
  const consumerCh = await channel(conn);
  await consumerCh.prefetch(2);
  const c = collector();
  await consumerCh.consume(q, (msg) => c.push(msg));
  await c.wait(2);
  await new Promise((r) => setTimeout(r, 300)); // asserting that nothing more arrives
  assert.equal(c.got.length, 2);
  consumerCh.ack(c.got[0]);
  await c.wait(3);
  consumerCh.ack(c.got[2], true); // multiple
  await c.wait(5);
  assert.deepEqual(c.got.map((m) => m.content.toString()), ['0', '1', '2', '3', '4']);
  consumerCh.ackAll();
  await cleanup(conn, [q]);
});

test('nack without requeue dead-letters with x-death; nack with requeue redelivers', async () => {
  const conn = await connect();
  const ch = await channel(conn);
  const dlx = unique('dlx');
  const q = unique('q');
  const dlq = unique('dlq');
  await ch.assertExchange(dlx, 'fanout', { durable: false });
  await ch.assertQueue(dlq, { durable: false });
  await ch.bindQueue(dlq, dlx, '');
  await ch.assertQueue(q, { durable: false, deadLetterExchange: dlx });
  ch.sendToQueue(q, Buffer.from('poison'));
  const c = collector();
  await ch.consume(q, (msg) => {
    c.push(msg);
    if (c.got.length === 1) ch.nack(msg, false, true);
    else ch.nack(msg, false, false);
  });
  const [first, second] = await c.wait(2);
  assert.equal(first.fields.redelivered, false);
  assert.equal(second.fields.redelivered, true);
  const dead = await withDeadline(
    (async () => {
      for (;;) {
        const m = await ch.get(dlq, { noAck: true });
        if (m) return m;
        await new Promise((r) => setTimeout(r, 20));
      }
    })(),
    'dead-lettered message',
  );
  assert.equal(dead.content.toString(), 'poison');
  assert.equal(dead.fields.exchange, dlx);
  const [death] = dead.properties.headers['x-death'];
  assert.equal(death.reason, 'rejected');
  assert.equal(death.queue, q);
  assert.equal(death.count, 1);
  assert.deepEqual(death['routing-keys'], [q]);
  assert.equal(dead.properties.headers['x-first-death-reason'], 'rejected');
  await cleanup(conn, [q, dlq], [dlx]);
});

test('basic.get and get-empty', async () => {
  const conn = await connect();
  const ch = await channel(conn);
  const { queue: q } = await ch.assertQueue('', { exclusive: true });
  assert.match(q, /^amq\.gen-/);
  assert.equal(await ch.get(q), false);
  ch.sendToQueue(q, Buffer.from('a'));
  ch.sendToQueue(q, Buffer.from('b'));
  await ch.checkQueue(q);
  const m = await ch.get(q);
  assert.equal(m.content.toString(), 'a');
  assert.equal(m.fields.messageCount, 1);
  ch.reject(m, true);
  const again = await ch.get(q, { noAck: true });
  assert.equal(again.content.toString(), 'a');
  assert.equal(again.fields.redelivered, true);
});

// Expects the operation to fail with a channel close of `code`, whose reply text matches `pattern`.
async function expectClose(promise, code, pattern) {
  let err;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  assert.ok(err, `expected a ${code} channel close, the operation succeeded`);
  assert.equal(err.code, code, `wanted reply code ${code}, got ${err.code}: ${err.message}`);
  assert.match(err.message, pattern);
}

function literal(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

test('error codes: 404 no queue / no exchange', async () => {
  const conn = await connect();
  const missing = unique('missing');
  await expectClose((await channel(conn)).checkQueue(missing), 404,
    new RegExp(`NOT_FOUND - no queue '${literal(missing)}' in vhost '/'`));
  await expectClose((await channel(conn)).checkExchange(missing), 404,
    new RegExp(`NOT_FOUND - no exchange '${literal(missing)}' in vhost '/'`));
});

test('error codes: 406 inequivalent declare', async () => {
  const conn = await connect();
  const q = unique('q');
  const ch = await channel(conn);
  await ch.assertQueue(q, { durable: false, arguments: { 'x-message-ttl': 1000 } });
  await expectClose((await channel(conn)).assertQueue(q, { durable: false, arguments: { 'x-message-ttl': 2000 } }), 406,
    new RegExp(`PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '${literal(q)}' in vhost '/'`));
  await cleanup(conn, [q]);
});

test('error codes: 405 exclusive queue of another connection', async () => {
  const conn = await connect();
  const excl = unique('excl');
  await (await channel(conn)).assertQueue(excl, { exclusive: true });
  const other = await connect();
  await expectClose((await channel(other)).checkQueue(excl), 405,
    new RegExp(`RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '${literal(excl)}' in vhost '/'`));
});

test('error codes: 403 reserved amq. prefix', async () => {
  const conn = await connect();
  const name = 'amq.node-' + crypto.randomUUID().slice(0, 6);
  await expectClose((await channel(conn)).assertExchange(name, 'direct'), 403,
    new RegExp(`ACCESS_REFUSED - exchange name '${literal(name)}' contains reserved prefix 'amq\\.\\*'`));
});

test('bad password is refused with 403 ACCESS_REFUSED', async () => {
  const bad = new globalThis.URL(URL);
  bad.password = 'definitely-wrong';
  await assert.rejects(amqp.connect(bad.toString()), (err) => {
    assert.match(err.message, /ACCESS_REFUSED/);
    return true;
  });
});
