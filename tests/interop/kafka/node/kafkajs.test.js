// kafkajs against the broker named by KAFKA_BOOTSTRAP (run.sh starts FerryMQ for it through
// python/with_ferrymq.py): admin createTopics/fetchTopicMetadata, producer (acks -1), and a
// consumer group reading everything from the beginning.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { Kafka, Partitioners, logLevel } = require('kafkajs');

const BOOTSTRAP = process.env.KAFKA_BOOTSTRAP;
if (!BOOTSTRAP) throw new Error('KAFKA_BOOTSTRAP is not set (run through tests/interop/kafka/run.sh)');
const WAIT_MS = 20000;

const kafka = new Kafka({
  clientId: 'ferrymq-interop-kafkajs',
  brokers: [BOOTSTRAP],
  logLevel: logLevel.WARN,
  retry: { retries: 3 },
  connectionTimeout: 5000,
  requestTimeout: WAIT_MS,
});

const open = [];
after(async () => {
  for (const c of open.reverse()) await c.disconnect().catch(() => {});
});

function uniqueTopic(tag) {
  return `it-kafkajs-${tag}-${crypto.randomBytes(6).toString('hex')}`;
}

function withDeadline(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function waitFor(pred, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await pred()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('admin createTopics and fetchTopicMetadata', async () => {
  const admin = kafka.admin();
  open.push(admin);
  await admin.connect();
  const topic = uniqueTopic('admin');
  assert.equal(await admin.createTopics({ topics: [{ topic, numPartitions: 3 }], waitForLeaders: true }), true);
  // A second create of the same topic is not an error to kafkajs: it answers false.
  assert.equal(await admin.createTopics({ topics: [{ topic, numPartitions: 3 }] }), false);
  const md = await admin.fetchTopicMetadata({ topics: [topic] });
  assert.equal(md.topics.length, 1);
  assert.equal(md.topics[0].name, topic);
  assert.deepEqual(md.topics[0].partitions.map((p) => p.partitionId).sort(), [0, 1, 2]);
  for (const p of md.topics[0].partitions) assert.equal(p.leader, 0);
  assert.ok((await admin.listTopics()).includes(topic));
  await admin.deleteTopics({ topics: [topic] });
  await waitFor(async () => !(await admin.listTopics()).includes(topic), 'the topic gone from listTopics');
});

test('producer acks -1 then a consumer group reads everything', async () => {
  const admin = kafka.admin();
  open.push(admin);
  await admin.connect();
  const topic = uniqueTopic('group');
  await admin.createTopics({ topics: [{ topic, numPartitions: 2 }], waitForLeaders: true });

  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  open.push(producer);
  await producer.connect();
  const N = 50;
  const sent = await producer.send({
    topic,
    acks: -1,
    messages: Array.from({ length: N }, (_, i) => ({
      key: `k${i % 5}`, value: `v${i}`, headers: { n: String(i) },
    })),
  });
  assert.deepEqual(sent.map((r) => r.errorCode), sent.map(() => 0));

  const consumer = kafka.consumer({ groupId: `g-${topic}`, sessionTimeout: 6000, heartbeatInterval: 300 });
  open.push(consumer);
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  const got = new Map();
  const done = new Promise((resolve) => {
    consumer.run({
      eachMessage: async ({ partition, message }) => {
        got.set(message.value.toString(), { partition, key: message.key.toString(), n: message.headers.n.toString() });
        if (got.size === N) resolve();
      },
    });
  });
  await withDeadline(done, WAIT_MS, `${N} messages in the group`);
  // kafkajs commits resolved offsets as it goes: the group's offsets reach the end.
  const committed = async () => (await admin.fetchOffsets({ groupId: `g-${topic}`, topics: [topic] }))[0]
    .partitions.reduce((n, p) => n + Math.max(0, Number(p.offset)), 0);
  await waitFor(async () => (await committed()) === N, `committed offsets summing to ${N}`);
  for (let i = 0; i < N; i++) {
    const m = got.get(`v${i}`);
    assert.ok(m, `v${i} not consumed`);
    assert.equal(m.key, `k${i % 5}`);
    assert.equal(m.n, String(i));
  }
  // Every key went to one partition.
  const byKey = new Map();
  for (const m of got.values()) byKey.set(m.key, (byKey.get(m.key) || new Set()).add(m.partition));
  for (const [k, ps] of byKey) assert.equal(ps.size, 1, `key ${k} in partitions ${[...ps]}`);
  await consumer.disconnect();
  assert.equal(await committed(), N);
});
