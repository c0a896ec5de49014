// MQTT interoperability with MQTT.js (Node's built-in test runner), over WebSocket and TCP.
// The broker comes from MQTT_URL / MQTT_WS_URL (run.sh sets them: FerryMQ started for the run,
// or an external broker such as Mosquitto via mosquitto.sh). Credentials: MQTT_USER / MQTT_PASSWORD.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const mqtt = require('mqtt');

const TCP_URL = process.env.MQTT_URL || (process.env.MQTT_HOST
  ? `mqtt://${process.env.MQTT_HOST}:${process.env.MQTT_PORT || 1883}` : null);
const WS_URL = process.env.MQTT_WS_URL;
if (!TCP_URL) throw new Error('MQTT_URL / MQTT_HOST is not set (run tests/interop/mqtt/run.sh)');
const USER = process.env.MQTT_USER || 'guest';
const PASSWORD = process.env.MQTT_PASSWORD || 'guest';
const DEADLINE_MS = 10000;
const wsOnly = WS_URL ? {} : { skip: 'no MQTT_WS_URL' };

const opened = [];
after(async () => {
  for (const c of opened) await c.endAsync(true).catch(() => {});
});

function unique(what) {
  return `it/node/${what}/${crypto.randomUUID().slice(0, 12)}`;
}

function withDeadline(promise, what, ms = DEADLINE_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Connects and waits for CONNACK; client.box collects messages from the very start (a resumed
// session's queued messages can arrive right after CONNACK), client.connack is the CONNACK.
async function connect(url, opts = {}) {
  const client = mqtt.connect(url, {
    username: USER, password: PASSWORD, reconnectPeriod: 0, connectTimeout: DEADLINE_MS,
    clientId: `mqttjs-${crypto.randomUUID().slice(0, 12)}`, ...opts,
  });
  opened.push(client);
  client.box = inbox(client);
  client.connack = await withDeadline(new Promise((resolve, reject) => {
    client.once('connect', resolve);
    client.once('error', reject);
  }), `CONNACK from ${url}`);
  client.on('error', () => {}); // asserted where expected
  return client;
}

// Collects messages; next() resolves with the next one (or fails at the deadline).
function inbox(client) {
  const queue = [];
  const waiters = [];
  client.on('message', (topic, payload, packet) => {
    const m = { topic, payload, packet };
    const w = waiters.shift();
    if (w) w(m); else queue.push(m);
  });
  return {
    next(what = 'a message') {
      if (queue.length) return Promise.resolve(queue.shift());
      return withDeadline(new Promise((resolve) => waiters.push(resolve)), what);
    },
    get pending() { return queue.length; },
  };
}

for (const protocolVersion of [4, 5]) {
  test(`ws v${protocolVersion}: publish and subscribe at QoS 0, 1 and 2`, wsOnly, async () => {
    const topic = unique(`ws${protocolVersion}`);
    const c = await connect(WS_URL, { protocolVersion });
    const box = c.box;
    const granted = await c.subscribeAsync(topic, { qos: 2 });
    assert.equal(granted[0].qos, 2);
    for (const qos of [0, 1, 2]) {
      await c.publishAsync(topic, `q${qos}`, { qos });
      const m = await box.next(`QoS ${qos} message`);
      assert.equal(m.payload.toString(), `q${qos}`);
      assert.equal(m.packet.qos, qos);
    }
  });

  test(`ws v${protocolVersion} <-> tcp`, wsOnly, async () => {
    const topic = unique('mix');
    const ws = await connect(WS_URL, { protocolVersion });
    const tcp = await connect(TCP_URL, { protocolVersion });
    const wsBox = ws.box;
    const tcpBox = tcp.box;
    await ws.subscribeAsync(`${topic}/to-ws`, { qos: 1 });
    await tcp.subscribeAsync(`${topic}/to-tcp`, { qos: 1 });
    await tcp.publishAsync(`${topic}/to-ws`, 'from tcp', { qos: 1 });
    await ws.publishAsync(`${topic}/to-tcp`, 'from ws', { qos: 1 });
    assert.equal((await wsBox.next()).payload.toString(), 'from tcp');
    assert.equal((await tcpBox.next()).payload.toString(), 'from ws');
  });
}

test('ws v5: user properties, content type, correlation data travel', wsOnly, async () => {
  const topic = unique('props');
  const sub = await connect(WS_URL, { protocolVersion: 5 });
  const box = sub.box;
  await sub.subscribeAsync(topic, { qos: 1 });
  const pub = await connect(TCP_URL, { protocolVersion: 5 });
  await pub.publishAsync(topic, '{"ok":true}', {
    qos: 1,
    properties: {
      userProperties: { tenant: 'a', zone: ['x', 'y'] },
      contentType: 'application/json',
      correlationData: Buffer.from([0, 1, 2]),
      responseTopic: `${topic}/reply`,
    },
  });
  const m = await box.next();
  const p = m.packet.properties;
  assert.equal(m.payload.toString(), '{"ok":true}');
  assert.deepEqual({ ...p.userProperties }, { tenant: 'a', zone: ['x', 'y'] });
  assert.equal(p.contentType, 'application/json');
  assert.deepEqual(p.correlationData, Buffer.from([0, 1, 2]));
  assert.equal(p.responseTopic, `${topic}/reply`);
});

test('ws: retained message on subscribe, cleared by an empty payload', wsOnly, async () => {
  const topic = unique('retained');
  const pub = await connect(WS_URL);
  await pub.publishAsync(topic, 'kept', { qos: 1, retain: true });
  const sub = await connect(WS_URL);
  const box = sub.box;
  await sub.subscribeAsync(topic, { qos: 1 });
  const m = await box.next('retained message');
  assert.equal(m.payload.toString(), 'kept');
  assert.equal(m.packet.retain, true);
  await pub.publishAsync(topic, '', { qos: 1, retain: true });
  const late = await connect(WS_URL);
  const lateBox = late.box;
  await late.subscribeAsync(topic, { qos: 1 });
  await pub.publishAsync(topic, 'live', { qos: 1 });
  const first = await lateBox.next();
  assert.equal(first.payload.toString(), 'live');
  assert.equal(first.packet.retain, false);
});

test('ws v5: persistent session receives what was published while offline', wsOnly, async () => {
  const topic = unique('session');
  const clientId = `mqttjs-sess-${crypto.randomUUID().slice(0, 8)}`;
  const opts = { protocolVersion: 5, clientId, properties: { sessionExpiryInterval: 300 } };
  const c = await connect(WS_URL, { ...opts, clean: true });
  await c.subscribeAsync(topic, { qos: 1 });
  await c.endAsync();
  const pub = await connect(TCP_URL);
  await pub.publishAsync(topic, 'while away', { qos: 1 });
  const back = await connect(WS_URL, { ...opts, clean: false });
  const { box, connack } = back;
  assert.equal(connack.sessionPresent, true);
  assert.equal((await box.next()).payload.toString(), 'while away');
});

test('ws: will published when the socket drops', wsOnly, async () => {
  const topic = unique('will');
  const watcher = await connect(TCP_URL);
  const box = watcher.box;
  await watcher.subscribeAsync(topic, { qos: 1 });
  const c = await connect(WS_URL, { will: { topic, payload: Buffer.from('ws died'), qos: 1, retain: false } });
  c.stream.destroy(); // no DISCONNECT
  assert.equal((await box.next('will')).payload.toString(), 'ws died');
});

test('tcp v5: MQTT.js topic aliases (autoAssignTopicAlias)', async () => {
  const topic = unique('alias');
  const sub = await connect(TCP_URL, { protocolVersion: 5 });
  const box = sub.box;
  await sub.subscribeAsync(topic, { qos: 1 });
  const pub = await connect(TCP_URL, { protocolVersion: 5, autoAssignTopicAlias: true });
  for (let i = 0; i < 3; i++) await pub.publishAsync(topic, `a${i}`, { qos: 1 });
  for (let i = 0; i < 3; i++) {
    const m = await box.next();
    assert.equal(m.topic, topic);
    assert.equal(m.payload.toString(), `a${i}`);
  }
});

test('tcp v3.1.1 and v5: shared subscription delivers each message to one member', async () => {
  const topic = unique('shared');
  const group = `g${crypto.randomUUID().slice(0, 8)}`;
  const members = [await connect(TCP_URL, { protocolVersion: 4 }), await connect(TCP_URL, { protocolVersion: 5 })];
  const seen = [];
  for (const m of members) {
    m.on('message', (t, payload) => seen.push(payload.toString()));
    await m.subscribeAsync(`$share/${group}/${topic}`, { qos: 1 });
  }
  const pub = await connect(TCP_URL);
  for (let i = 0; i < 20; i++) await pub.publishAsync(topic, `${i}`, { qos: 1 });
  await withDeadline((async () => { while (seen.length < 20) await new Promise((r) => setTimeout(r, 20)); })(),
    '20 messages to the group');
  await new Promise((r) => setTimeout(r, 300)); // grace: no duplicates arrive late
  assert.deepEqual(seen.map(Number).sort((a, b) => a - b), [...Array(20).keys()]);
});
