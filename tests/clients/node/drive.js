// Drives a kernels-gateway with JupyterLab's own services library, the way JupyterLab does.
// Usage: GATEWAY_URL=http://127.0.0.1:8000/krn GATEWAY_TOKEN=T node drive.js
// Asserts as it goes, prints what it saw as one JSON object, exits non-zero on any failure.

import assert from "node:assert/strict";
import services from "@jupyterlab/services";
import WebSocket from "ws";

const { KernelAPI, KernelManager, KernelSpecManager, ServerConnection } = services;
const baseUrl = process.env.GATEWAY_URL;
const seen = {};

setTimeout(() => {
  console.error("timed out; got so far:", JSON.stringify(seen));
  process.exit(2);
}, 120_000).unref();

function settings(token) {
  return ServerConnection.makeSettings({ baseUrl, token, WebSocket, appendToken: true });
}

/** Run code; the execute_reply's content and the text of every stream and result. */
async function execute(kernel, code, onStream = () => {}) {
  const future = kernel.requestExecute({ code });
  let text = "";
  future.onIOPub = (msg) => {
    if (msg.header.msg_type === "stream") {
      text += msg.content.text;
      onStream(msg.content.text);
    } else if (msg.header.msg_type === "execute_result") {
      text += msg.content.data["text/plain"];
    }
  };
  const reply = await future.done;
  return { content: reply.content, text };
}

async function refused(token) {
  try {
    await KernelAPI.listRunning(settings(token));
  } catch (error) {
    return error.response.status;
  }
  return 200;
}

const serverSettings = settings(process.env.GATEWAY_TOKEN);
const specs = new KernelSpecManager({ serverSettings });
await specs.ready;
seen.specs = { default: specs.specs.default, names: Object.keys(specs.specs.kernelspecs) };

const manager = new KernelManager({ serverSettings });
await manager.ready;
const kernel = await manager.startNew({ name: "python3" });
seen.kernelId = kernel.id;
const statuses = [];
kernel.statusChanged.connect((_, status) => statuses.push(status));
seen.info = (await kernel.info).implementation;
seen.protocol = kernel._ws.protocol;

const hello = await execute(kernel, "print('hello from node')\n6 * 7");
assert.equal(hello.content.status, "ok");
seen.hello = hello.text;

let sleeping;
const started = new Promise((resolve) => (sleeping = resolve));
const long = execute(kernel, "import time\nprint('sleeping', flush=True)\ntime.sleep(60)", sleeping);
await started;
await kernel.interrupt();
const interrupted = await long;
seen.interrupted = interrupted.content.ename;

await execute(kernel, "survivor = 1");
await kernel.restart();
const after = await execute(kernel, "print('survivor' in dir())");
seen.afterRestart = after.text;
seen.statuses = [...statuses];

seen.listed = (await KernelAPI.listRunning(serverSettings)).map((model) => model.id);
await manager.refreshRunning();
seen.managed = Array.from(manager.running(), (model) => model.id);
await kernel.shutdown();
seen.listedAfterShutdown = (await KernelAPI.listRunning(serverSettings)).map((model) => model.id);
seen.noToken = await refused("");
seen.wrongToken = await refused("not-the-token");
manager.dispose();
specs.dispose();
console.log(JSON.stringify(seen));
process.exit(0); // the library's pollers and reconnect timers would keep Node alive for a while
