#!/usr/bin/env node
// rbee-node-subscriber: an external rbee heartbeat subscriber written from
// docs/wire.md alone. It subscribes to every heartbeat subject and every
// registry event, watches both registry buckets and prints one JSON object
// per line on stdout:
//
//   {"type":"beat","subject":S,"schema":"worker/1"|"hive/1"|"queen/1","event":"goodbye"|null,"size":N,"payload":{...}}
//   {"type":"kv","bucket":B,"key":K,"op":"PUT"|"DEL"|"PURGE","state":"alive"|"left"|"expired","liveness":L|null,"revision":N,"initial":BOOL,"value":{...}|null}
//   {"type":"event","subject":S,"event":E,"key":K,"payload":{...}}   a registry event (joined, expired, stalled, ...)
//   {"type":"waiting","bucket":B,"message":M}   a bucket cannot be watched yet; retried every second
//   {"type":"ready"}                             subscribed and both buckets watched
//   {"type":"error","source":"beat"|"kv"|"nats","reason":R,"message":M,...}
//
// Diagnostics go to stderr; stdout carries only these lines.

import { readFileSync } from "node:fs";
import { connect, credsAuthenticator } from "@nats-io/transport-node";
import { Kvm } from "@nats-io/kv";
import { decode } from "@msgpack/msgpack";

const USAGE = "usage: subscriber.mjs [--prefix rbee] [--nats-url URL[,URL...]] [--creds FILE]";

// Values from docs/wire.md.
const MAX_PAYLOAD = 262144; // bytes; larger beats are refused ("oversize")
const CONTENT_TYPE = "application/msgpack";
const SCHEMAS = { worker: "worker/1", hive: "hive/1", queen: "queen/1" }; // subject kind -> Rbee-Schema
const EVENT_SCHEMA = "event/1";
const SCHEMA_VERSION = 1; // the payload's "v" this reader understands
const TOKEN = /^[A-Za-z0-9_-]+$/;
const RETRY_MS = 1000;

function parseArgs(argv) {
  const opts = {
    prefix: "rbee",
    servers: process.env.NATS_URL || "nats://127.0.0.1:4222",
    creds: process.env.NATS_CREDS || "",
  };
  const names = { "--prefix": "prefix", "--nats-url": "servers", "--creds": "creds" };
  for (let i = 0; i < argv.length; i++) {
    let [flag, value] = argv[i].split(/=(.*)/s, 2);
    if (flag === "-h" || flag === "--help") {
      process.stdout.write(USAGE + "\n");
      process.exit(0);
    }
    if (!(flag in names)) {
      fail(`unknown argument ${JSON.stringify(argv[i])}`);
    }
    if (value === undefined) {
      if (i + 1 >= argv.length) fail(`${flag} needs a value`);
      value = argv[++i];
    }
    opts[names[flag]] = value;
  }
  if (opts.prefix.length > 32 || !TOKEN.test(opts.prefix)) {
    fail(`--prefix ${JSON.stringify(opts.prefix)} must be 1-32 characters of A-Z a-z 0-9 _ -`);
  }
  opts.servers = opts.servers.split(",").map((s) => s.trim()).filter(Boolean);
  return opts;
}

function fail(reason) {
  process.stderr.write(`rbee-node-subscriber: ${reason}\n${USAGE}\n`);
  process.exit(2);
}

// toJSON renders a decoded msgpack value as JSON. Unlike JSON.stringify it
// keeps 64-bit integers exact (they decode as bigint), writes binary as
// base64 and non-finite floats as null.
function toJSON(v) {
  switch (typeof v) {
    case "bigint":
      return v.toString();
    case "number":
      return Number.isFinite(v) ? String(v) : "null";
    case "string":
    case "boolean":
      return JSON.stringify(v);
    case "undefined":
      return "null";
  }
  if (v === null) return "null";
  if (v instanceof Uint8Array) return JSON.stringify(Buffer.from(v).toString("base64"));
  if (v instanceof Date) return JSON.stringify(v.toISOString());
  if (Array.isArray(v)) return "[" + v.map(toJSON).join(",") + "]";
  return "{" + Object.entries(v).map(([k, e]) => JSON.stringify(k) + ":" + toJSON(e)).join(",") + "}";
}

let stdoutClosed = false;
process.stdout.on("error", (err) => {
  // A closed pipe (e.g. `| head`) ends the program quietly.
  if (err.code === "EPIPE") {
    stdoutClosed = true;
    shutdown(0);
    return;
  }
  throw err;
});

function emit(obj) {
  if (!stdoutClosed) process.stdout.write(toJSON(obj) + "\n");
}

class DecodeError extends Error {
  constructor(reason, message) {
    super(message);
    this.reason = reason;
  }
}

// decodeMap decodes one msgpack map (a payload or a registry value). Integers
// beyond 32 bits decode as bigint so that none loses precision.
function decodeMap(data) {
  if (data.length > MAX_PAYLOAD) {
    throw new DecodeError("oversize", `${data.length} bytes, at most ${MAX_PAYLOAD}`);
  }
  let v;
  try {
    v = decode(data, { useBigInt64: true });
  } catch (err) {
    throw new DecodeError("undecodable", err.message);
  }
  if (v === null || typeof v !== "object" || Array.isArray(v) || v instanceof Uint8Array || v instanceof Date) {
    throw new DecodeError("undecodable", "not a msgpack map");
  }
  if (Number(v.v) !== SCHEMA_VERSION) {
    throw new DecodeError("unknown_schema", `v=${toJSON(v.v ?? null)}, this reader reads v=${SCHEMA_VERSION}`);
  }
  return v;
}

// parseSubject splits "<prefix>.hb.worker.<hive_id>.<worker_id>",
// "<prefix>.hb.hive.<hive_id>" and "<prefix>.hb.queen.<queen_id>"; it
// returns null for anything else.
function parseSubject(prefix, subject) {
  const t = subject.split(".");
  if (t.length < 4 || t[0] !== prefix || t[1] !== "hb") return null;
  const ids = t.slice(3);
  if (!ids.every((id) => id.length <= 64 && TOKEN.test(id))) return null;
  if (t[2] === "worker" && ids.length === 2) return { kind: "worker", hive_id: ids[0], worker_id: ids[1] };
  if (t[2] === "hive" && ids.length === 1) return { kind: "hive", hive_id: ids[0] };
  if (t[2] === "queen" && ids.length === 1) return { kind: "queen", queen_id: ids[0] };
  return null;
}

// spoofed reports whether a payload's IDs differ from its subject's.
function spoofed(addr, payload) {
  if (addr.kind === "queen") return payload.queen_id !== addr.queen_id;
  return payload.hive_id !== addr.hive_id || (addr.kind === "worker" && payload.worker_id !== addr.worker_id);
}

function onBeat(prefix, msg) {
  const subject = msg.subject;
  const header = (name) => (msg.headers ? msg.headers.get(name) || null : null);
  const schema = header("Rbee-Schema");
  const refuse = (reason, message) =>
    emit({ type: "error", source: "beat", reason, subject, schema, message });

  const addr = parseSubject(prefix, subject);
  if (!addr) return refuse("bad_subject", "not a heartbeat subject");
  const ct = header("Content-Type");
  if (ct !== CONTENT_TYPE) return refuse("bad_headers", `Content-Type ${JSON.stringify(ct)}, want ${CONTENT_TYPE}`);
  if (schema !== SCHEMAS[addr.kind]) {
    return refuse("unknown_schema", `Rbee-Schema ${JSON.stringify(schema)} on a ${addr.kind} subject, want ${SCHEMAS[addr.kind]}`);
  }
  let payload;
  try {
    payload = decodeMap(msg.data);
  } catch (err) {
    return refuse(err.reason ?? "undecodable", err.message);
  }
  if (spoofed(addr, payload)) {
    return refuse("spoofed", `payload says hive ${toJSON(payload.hive_id ?? null)} worker ${toJSON(payload.worker_id ?? null)} queen ${toJSON(payload.queen_id ?? null)}`);
  }
  emit({ type: "beat", subject, schema, event: header("Rbee-Event"), size: msg.data.length, payload });
}

// onEvent prints one registry event from "<prefix>.evt.<event>.<hive_id>[.<worker_id>]"
// after the same checks as a beat: headers, decoding, and IDs that match the subject.
function onEvent(prefix, msg) {
  const subject = msg.subject;
  const header = (name) => (msg.headers ? msg.headers.get(name) || null : null);
  const refuse = (reason, message) => emit({ type: "error", source: "event", reason, subject, message });
  const t = subject.split(".");
  if (t.length < 4 || t.length > 5 || t[0] !== prefix || t[1] !== "evt" || !t.slice(2).every((id) => id.length <= 64 && TOKEN.test(id))) {
    return refuse("bad_subject", "not an event subject");
  }
  if (header("Content-Type") !== CONTENT_TYPE) return refuse("bad_headers", `Content-Type ${JSON.stringify(header("Content-Type"))}`);
  if (header("Rbee-Schema") !== EVENT_SCHEMA) return refuse("unknown_schema", `Rbee-Schema ${JSON.stringify(header("Rbee-Schema"))}, want ${EVENT_SCHEMA}`);
  let payload;
  try {
    payload = decodeMap(msg.data);
  } catch (err) {
    return refuse(err.reason ?? "undecodable", err.message);
  }
  if (payload.event !== t[2] || payload.hive_id !== t[3] || (payload.worker_id ?? undefined) !== t[4]) {
    return refuse("spoofed", `payload says ${toJSON(payload.event ?? null)} of ${toJSON(payload.key ?? null)}`);
  }
  emit({ type: "event", subject, event: payload.event, key: payload.key, payload });
}

// onEntry prints one registry change. known holds the state of each key of
// the bucket seen so far: a PURGE that follows a DEL is the delete marker
// ageing out of the bucket, not an expiry, so the key stays "left".
function onEntry(bucket, known, initial, e) {
  const op = e.operation;
  let value = null;
  let state;
  let liveness = null;
  switch (op) {
    case "PUT":
      try {
        value = decodeMap(e.value);
      } catch (err) {
        emit({ type: "error", source: "kv", reason: err.reason ?? "undecodable", bucket, key: e.key, revision: e.revision, message: err.message });
        return;
      }
      state = "alive";
      // The queen's judgement beyond the TTL: an absent key means alive.
      liveness = value.liveness ?? "alive";
      known.set(e.key, state);
      break;
    case "DEL":
      state = "left";
      known.set(e.key, state);
      break;
    case "PURGE":
      state = known.get(e.key) === "left" ? "left" : "expired";
      known.delete(e.key); // nothing follows a purge marker but its own silent removal
      break;
    default:
      state = null;
  }
  emit({ type: "kv", bucket, key: e.key, op, state, liveness, revision: e.revision, initial, value });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let nc = null;
let stopping = false;
const watches = new Set();

// watchBucket watches one registry bucket for as long as the program runs.
// It retries until the bucket exists (the queen creates it) and re-watches
// from a fresh snapshot if the watch ends. onWatching is called once the
// first watch is established.
async function watchBucket(kvm, bucket, onWatching) {
  let waiting = null;
  while (!stopping) {
    let iter;
    let snapshotEnd; // entries up to this revision existed when the watch began
    try {
      const kv = await kvm.open(bucket);
      const st = await kv.status(); // fails while the bucket does not exist
      snapshotEnd = st.streamInfo.state.last_seq;
      iter = await kv.watch();
    } catch (err) {
      if (stopping) return;
      if (waiting !== err.message) {
        waiting = err.message;
        emit({ type: "waiting", bucket, message: err.message });
      }
      await sleep(RETRY_MS);
      continue;
    }
    waiting = null;
    watches.add(iter);
    onWatching();
    const known = new Map();
    try {
      for await (const e of iter) onEntry(bucket, known, e.revision <= snapshotEnd, e);
    } catch (err) {
      if (!stopping) emit({ type: "error", source: "nats", reason: "watch", bucket, message: err.message });
    } finally {
      watches.delete(iter);
    }
    if (!stopping) await sleep(RETRY_MS);
  }
}

async function shutdown(code) {
  if (stopping) return;
  stopping = true;
  for (const w of watches) w.stop();
  if (nc) {
    const timer = setTimeout(() => process.exit(code), 2000);
    timer.unref();
    try {
      await nc.close();
    } catch {
      // already closed
    }
  }
  process.exit(code);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  process.on("SIGINT", () => shutdown(0));
  process.on("SIGTERM", () => shutdown(0));

  const copts = { servers: opts.servers, name: "rbee-node-subscriber", maxReconnectAttempts: -1 };
  if (opts.creds) copts.authenticator = credsAuthenticator(readFileSync(opts.creds));
  try {
    nc = await connect(copts);
  } catch (err) {
    process.stderr.write(`rbee-node-subscriber: connect ${opts.servers.join(",")}: ${err.message}\n`);
    process.exit(1);
  }
  (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect" || s.type === "reconnect" || s.type === "error") {
        process.stderr.write(`rbee-node-subscriber: nats ${s.type} ${s.server ?? ""} ${s.error?.message ?? ""}\n`);
      }
    }
  })();
  nc.closed().then((err) => {
    if (!stopping) {
      process.stderr.write(`rbee-node-subscriber: connection closed${err ? ": " + err.message : ""}\n`);
      process.exit(1);
    }
  });

  const sub = nc.subscribe(`${opts.prefix}.hb.>`, {
    callback: (err, msg) => {
      if (err) {
        emit({ type: "error", source: "nats", reason: "subscription", message: err.message });
        return;
      }
      try {
        onBeat(opts.prefix, msg);
      } catch (e) {
        emit({ type: "error", source: "beat", reason: "internal", subject: msg.subject, message: String(e?.message ?? e) });
      }
    },
  });
  const evsub = nc.subscribe(`${opts.prefix}.evt.>`, {
    callback: (err, msg) => {
      if (err) {
        emit({ type: "error", source: "nats", reason: "subscription", message: err.message });
        return;
      }
      try {
        onEvent(opts.prefix, msg);
      } catch (e) {
        emit({ type: "error", source: "event", reason: "internal", subject: msg.subject, message: String(e?.message ?? e) });
      }
    },
  });
  await nc.flush();

  const kvm = new Kvm(nc);
  const watching = [`${opts.prefix}_workers`, `${opts.prefix}_hives`].map(
    (bucket) => new Promise((resolve) => watchBucket(kvm, bucket, resolve)),
  );
  await Promise.all(watching);
  if (!stopping && !sub.isClosed() && !evsub.isClosed()) emit({ type: "ready" });
}

main().catch((err) => {
  process.stderr.write(`rbee-node-subscriber: ${err?.stack ?? err}\n`);
  process.exit(1);
});
