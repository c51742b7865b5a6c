// kernels-gateway browser client: a small, dependency-free ES module served at {base}/client.js.
//
//   const { Gateway } = await import("http://127.0.0.1:8000/krn/client.js");
//   const gateway = new Gateway("http://127.0.0.1:8000/krn", { token: "T" });
//   const kernel = await gateway.startKernel();          // or: await gateway.attach(kernelId)
//   kernel.addEventListener("status", (e) => console.log(e.detail));   // busy, idle, restarting, dead
//   await kernel.execute("print(6 * 7)", { onOutput: (output) => console.log(output) });
//   await kernel.execute("input('Name? ')", { onInput: async (prompt, password) => "Ada" });
//   await kernel.interrupt(); await kernel.restart(); await kernel.shutdown();
//
// The websocket speaks the legacy protocol (JSON text frames; binary frames when a message carries
// buffers). REST calls send `Authorization: token T`; the websocket, which cannot send headers, `?token=T`.

const PROTOCOL_VERSION = "5.3";
const READY_TIMEOUT_MS = 30000;
// About a minute in all: long enough for a web worker to be restarted on a busy machine.
const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000, 4000, 8000, 8000, 8000, 8000, 8000, 8000];

/** An HTTP error answered by the gateway: `status` and the gateway's `message`. */
export class GatewayError extends Error {
  constructor(status, message) {
    super(`${status}: ${message}`);
    this.name = "GatewayError";
    this.status = status;
  }
}

function randomId() {
  // crypto.randomUUID exists only on secure origins; getRandomValues everywhere.
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A message from a binary legacy frame: u32 big-endian count, offsets, then JSON and buffers. */
function decodeBinary(data) {
  const view = new DataView(data);
  const count = view.getUint32(0);
  const offsets = [];
  for (let i = 0; i < count; i++) offsets.push(view.getUint32(4 * (i + 1)));
  offsets.push(data.byteLength);
  const message = JSON.parse(new TextDecoder().decode(data.slice(offsets[0], offsets[1])));
  message.buffers = offsets.slice(1, -1).map((start, i) => new DataView(data, start, offsets[i + 2] - start));
  return message;
}

/** An iopub message as a notebook output (nbformat's shape), or null if it is not one. */
function toOutput(msg) {
  const c = msg.content;
  switch (msg.header.msg_type) {
    case "stream":
      return { output_type: "stream", name: c.name, text: c.text };
    case "execute_result":
      return { output_type: "execute_result", data: c.data, metadata: c.metadata, execution_count: c.execution_count };
    case "display_data":
    case "update_display_data":
      return { output_type: "display_data", data: c.data, metadata: c.metadata };
    case "error":
      return { output_type: "error", ename: c.ename, evalue: c.evalue, traceback: c.traceback };
    default:
      return null;
  }
}

export class Gateway {
  /** `url`: the gateway's base, such as http://host:8000/krn; `token`: its --auth-token, if any. */
  constructor(url, { token = "" } = {}) {
    this.url = url.replace(/\/+$/, "");
    this.token = token;
  }

  async request(method, path, body) {
    const headers = {};
    if (this.token) headers.Authorization = `token ${this.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(this.url + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) {
      const reply = await response.json().catch(() => ({}));
      throw new GatewayError(response.status, reply.message || response.statusText);
    }
    return response.status === 204 ? null : response.json();
  }

  kernelspecs() {
    return this.request("GET", "/api/kernelspecs");
  }

  kernels() {
    return this.request("GET", "/api/kernels");
  }

  /** Start a kernel (`name`: a kernelspec; `env`: KERNEL_* variables) and connect to it. */
  async startKernel({ name, env } = {}) {
    const model = await this.request("POST", "/api/kernels", { name, env });
    return this.attach(model.id);
  }

  /** Connect to a running kernel; resolves once it has answered over the websocket. */
  async attach(kernelId) {
    const model = await this.request("GET", `/api/kernels/${encodeURIComponent(kernelId)}`);
    const kernel = new Kernel(this, model);
    await kernel.connect();
    return kernel;
  }
}

/**
 * One kernel and its websocket. Events: "status" (detail: the execution state: starting, idle, busy,
 * restarting or dead) and "connection" (detail: connecting, connected or disconnected).
 */
export class Kernel extends EventTarget {
  constructor(gateway, model) {
    super();
    this.gateway = gateway;
    this.id = model.id;
    this.name = model.name;
    this.status = model.execution_state;
    this.connection = "disconnected";
    this.info = null; // the kernel_info_reply's content: language_info, banner, ...
    this.sessionId = randomId();
    this._pending = new Map(); // msg_id -> {callbacks, resolve, reject, reply, idle}
    this._ws = null;
    this._closing = false;
  }

  _setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this.dispatchEvent(new CustomEvent("status", { detail: status }));
  }

  _setConnection(connection) {
    if (connection === this.connection) return;
    this.connection = connection;
    this.dispatchEvent(new CustomEvent("connection", { detail: connection }));
  }

  /** Open the websocket and wait until the kernel answers through it: only then is it really open. */
  async connect() {
    this._setConnection("connecting");
    const base = this.gateway.url.replace(/^http/, "ws");
    const query = new URLSearchParams({ session_id: this.sessionId });
    if (this.gateway.token) query.set("token", this.gateway.token);
    const ws = new WebSocket(`${base}/api/kernels/${encodeURIComponent(this.id)}/channels?${query}`);
    ws.binaryType = "arraybuffer";
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onclose = (event) => reject(new Error(`websocket refused or closed (code ${event.code})`));
    });
    this._ws = ws;
    ws.onmessage = (event) => this._receive(typeof event.data === "string" ? JSON.parse(event.data) : decodeBinary(event.data));
    ws.onclose = () => this._lost(ws);
    try {
      this.info = (await this.request("kernel_info_request", {}, { timeout: READY_TIMEOUT_MS })).content;
    } catch (error) {
      this._ws = null;
      ws.close();
      throw error;
    }
    this._setConnection("connected");
    if (["starting", "restarting", "unknown"].includes(this.status)) this._setStatus("idle");
  }

  _receive(msg) {
    if (msg.channel === "iopub" && msg.header.msg_type === "status") {
      const state = msg.content.execution_state;
      // The gateway announces a kernel that died (and is being restarted) or is given up on:
      // what was running in it will never answer.
      if ((state === "restarting" || state === "dead") && state !== this.status) {
        this._failPending(new Error(`the kernel is ${state}`));
      }
      this._setStatus(state);
    }
    const request = this._pending.get(msg.parent_header && msg.parent_header.msg_id);
    if (!request) return;
    if (msg.channel === "stdin" && msg.header.msg_type === "input_request") {
      this._answerInput(request, msg);
      return;
    }
    if (msg.channel === "iopub") {
      request.callbacks.onMessage?.(msg);
      const output = toOutput(msg);
      if (output) request.callbacks.onOutput?.(output);
      if (msg.header.msg_type === "status" && msg.content.execution_state === "idle") request.idle = true;
    } else if (msg.channel === request.channel) {
      request.reply = msg;
    }
    if (request.reply && (request.idle || !request.waitForIdle)) {
      this._pending.delete(msg.parent_header.msg_id);
      request.resolve(request.reply);
    }
  }

  /**
   * Send a request and resolve with its reply (and, unless `waitForIdle` is false, once its output has
   * all arrived). Callbacks: `onOutput(output)` for each output in nbformat's shape, `onMessage(msg)`
   * for every iopub message the request caused.
   */
  request(msgType, content, { channel = "shell", callbacks = {}, waitForIdle = true, timeout = 0 } = {}) {
    const msg = this._message(channel, msgType, content);
    const msgId = msg.header.msg_id;
    return new Promise((resolve, reject) => {
      if (!this._ws || this._ws.readyState !== WebSocket.OPEN) {
        reject(new Error("not connected"));
        return;
      }
      this._pending.set(msgId, { channel, callbacks, resolve, reject, waitForIdle, reply: null, idle: false });
      if (timeout) {
        setTimeout(() => {
          if (this._pending.delete(msgId)) reject(new Error(`no ${msgType} reply within ${timeout} ms`));
        }, timeout);
      }
      this._ws.send(JSON.stringify(msg));
    });
  }

  _message(channel, msgType, content, parentHeader = {}) {
    return {
      channel,
      header: {
        msg_id: randomId(), msg_type: msgType, session: this.sessionId, username: "",
        date: new Date().toISOString(), version: PROTOCOL_VERSION,
      },
      parent_header: parentHeader, metadata: {}, content, buffers: [],
    };
  }

  /**
   * Run code; resolves with the execute_reply's content once all its output has arrived. With
   * `onInput(prompt, password)`, a function returning the answer (or a promise of it), the code may
   * ask for input (`input()`, `getpass()`); without it, asking raises StdinNotImplementedError in the
   * kernel. If onInput throws or rejects, the kernel is interrupted: the code stops where it asked.
   */
  async execute(code, { onOutput, onMessage, onInput, silent = false } = {}) {
    const content = {
      code, silent, store_history: !silent, user_expressions: {}, allow_stdin: Boolean(onInput), stop_on_error: true,
    };
    return (await this.request("execute_request", content, { callbacks: { onOutput, onMessage, onInput } })).content;
  }

  /** The kernel asks for input on behalf of a request: the request's onInput answers on stdin. */
  async _answerInput(request, msg) {
    let value;
    try {
      value = String(await request.callbacks.onInput(msg.content.prompt, Boolean(msg.content.password)));
    } catch {
      await this.interrupt().catch(() => {});
      return;
    }
    if (this._ws?.readyState === WebSocket.OPEN) {
      this._ws.send(JSON.stringify(this._message("stdin", "input_reply", { value }, msg.header)));
    }
  }

  interrupt() {
    return this.gateway.request("POST", `/api/kernels/${this.id}/interrupt`);
  }

  /** Restart the kernel: "restarting", then "idle" once the new process answers. */
  async restart() {
    this._setStatus("restarting");
    this._failPending(new Error("the kernel restarted"));
    await this.gateway.request("POST", `/api/kernels/${this.id}/restart`);
    this.info = (await this.request("kernel_info_request", {}, { timeout: READY_TIMEOUT_MS })).content;
    if (this.status === "restarting") this._setStatus("idle");
  }

  /** Shut the kernel down on the gateway and close the websocket. */
  async shutdown() {
    await this.gateway.request("DELETE", `/api/kernels/${this.id}`);
    this._dead();
  }

  /** Close the websocket; the kernel keeps running (attach to it again later). */
  close() {
    this._closing = true;
    this._failPending(new Error("the connection was closed"));
    this._ws?.close();
    this._setConnection("disconnected");
  }

  _failPending(error) {
    for (const request of this._pending.values()) request.reject(error);
    this._pending.clear();
  }

  _dead() {
    this.close();
    this._setStatus("dead");
  }

  /** The websocket dropped: reconnect with the same session (the gateway replays what was missed),
   *  unless the kernel is gone, which makes it dead. */
  async _lost(ws) {
    if (this._closing || ws !== this._ws) return;
    this._ws = null;
    this._setConnection("disconnected");
    for (const delay of RECONNECT_DELAYS_MS) {
      await sleep(delay);
      if (this._closing) return;
      try {
        const model = await this.gateway.request("GET", `/api/kernels/${this.id}`);
        this._setStatus(model.execution_state);
        await this.connect();
        return;
      } catch (error) {
        if (error instanceof GatewayError && error.status === 404) {
          this._dead();
          return;
        }
      }
    }
    this.close(); // unreachable for now; the kernel may live on: attach again later
  }
}
