#!/usr/bin/env node
// Node-Media-Server (npm node-media-server 4.x) as a peer for scripts/bench: RTMP and HTTP-FLV
// on the given ports, nothing else (no RTMPS/HTTPS, no web console, no REST API, no auth, no
// recording), its GOP cache as it always is (v4 has no switch for it), its log quiet. The
// package's own launcher (bin/app.js) is not used: it writes a generated admin password back
// into the package's config file and leaves the log at "debug" (a line per connection).
//   node scripts/nms-bench.js --nms DIR --bind ADDR --rtmp-port N --http-port N --data DIR
// DIR is the installed package (.../node_modules/node-media-server). One process: the PID
// scripts/bench samples is this node process.
"use strict";
const path = require("path");
const { parseArgs } = require("util");

const { values: a } = parseArgs({
  options: {
    nms: { type: "string" },
    bind: { type: "string", default: "127.0.0.1" },
    "rtmp-port": { type: "string" },
    "http-port": { type: "string" },
    data: { type: "string" },
  },
  strict: true,
});
for (const k of ["nms", "rtmp-port", "http-port", "data"]) {
  if (!a[k]) {
    console.error(`nms-bench.js: --${k} is required`);
    process.exit(2);
  }
}
const NodeMediaServer = require(path.resolve(a.nms));
const logger = require(path.resolve(a.nms, "src/core/logger.js"));

const config = {
  bind: a.bind,
  rtmp: { port: Number(a["rtmp-port"]) },
  http: { port: Number(a["http-port"]) },
  webadmin: { enable: false },
  // Relay tasks, stream history and record metadata go to this store; nothing is recorded.
  store: { path: path.resolve(a.data) },
  record: { auto: false, path: path.resolve(a.data, "record") },
};
const nms = new NodeMediaServer(config, path.resolve(a.data, "config.json"));
// The constructor sets the shared logger to "debug"; errors only from here on.
logger.level = "error";
nms.run();
