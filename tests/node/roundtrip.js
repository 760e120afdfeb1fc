// The README's round trip from another language: a Node client (grpc-js + proto-loader)
// loaded straight from proto/, as a Node user would, against a running server.
//
//   node tests/node/roundtrip.js 127.0.0.1:50051
//
// Prints one JSON line of what it saw; exits non-zero on anything unexpected.
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const ROOT = path.resolve(__dirname, "..", "..");
const INCLUDES = [path.join(ROOT, "proto"), path.join(ROOT, "third_party", "googleapis")];

function load() {
  const definition = protoLoader.loadSync("kato/v1/kato_service.proto", {
    includeDirs: INCLUDES,
    keepCase: true,
    longs: String,
    enums: String,
    defaults: false,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).kato.v1;
}

// google.rpc.Status and its details, decoded from the grpc-status-details-bin trailer.
function decodeStatus(error) {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) =>
    INCLUDES.map((dir) => path.join(dir, target)).find((p) => fs.existsSync(p)) || target;
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
  const Status = root.lookupType("google.rpc.Status");
  const [bin] = error.metadata.get("grpc-status-details-bin");
  const status = Status.decode(bin);
  const details = status.details.map((any) => {
    const type = root.lookupType((any.type_url || any.typeUrl).split("/").pop());
    return { type: type.fullName.slice(1), ...type.toObject(type.decode(any.value)) };
  });
  return { code: status.code, message: status.message, details };
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 10000 }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

async function main() {
  const address = process.argv[2];
  const kato = load();
  const client = new kato.KatoService(address, grpc.credentials.createInsecure());
  const node = "node-client-" + process.pid + "-" + Date.now();
  const session = await call(client, "CreateSession", {
    session: { knowledge_base: "knowledgeBases/" + node, config: { recall_threshold: 0.1 } },
  });
  const sid = session.name;
  for (const s of ["hello", "world", "again"]) {
    await call(client, "Observe", { name: sid, observation: { strings: [s] } });
  }
  const learned = await call(client, "Learn", { name: sid });
  await call(client, "Observe", { name: sid, observation: { strings: ["hello"] } });
  const predictions = await call(client, "GetPredictions", { name: sid });
  const pattern = await call(client, "GetPattern", { name: learned.pattern });
  const top = predictions.predictions[0];
  let error;
  try {
    await call(client, "Observe", { name: sid, observation: { strings: ["x".repeat(5000)] } });
    throw new Error("an oversized symbol was accepted");
  } catch (err) {
    if (!err.metadata) throw err;
    error = { grpcCode: err.code, status: decodeStatus(err) };
  }
  client.close();
  console.log(
    JSON.stringify({
      node,
      session: { name: session.name, knowledge_base: session.knowledge_base },
      stm_length: session.stm_length,
      ttl_seconds: session.ttl_seconds,
      learn_status: learned.status,
      pattern: learned.pattern,
      got_pattern: { name: pattern.name, frequency: pattern.frequency },
      prediction: { pattern: top.pattern, type: top.type, future: top.future.map((e) => e.symbols) },
      error,
    }),
  );
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
