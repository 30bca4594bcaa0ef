// The live stream, read with fetch so that the token travels in the Authorization header,
// never in a URL. It resumes from the last event id after anything ends it — the token's
// expiry (`reauthenticate`), a restart of the daemon, a network drop — with a freshly
// renewed token, so nothing the supervisor may see is missed; a `gap` (the window no longer
// reaches back) asks the page to reload its report.
import { currentToken } from "./auth.js";

export class LiveStream {
  /**
   * @param {string} after the report's `stream_id`: events after it
   * @param {(kind: string, data: object, id: string) => void} onEvent
   * @param {{onGap: () => void, onState: (state: string) => void}} hooks
   */
  constructor(after, onEvent, hooks) {
    this.lastId = after;
    this.onEvent = onEvent;
    this.hooks = hooks;
    this.stopped = false;
    this.controller = null;
    this.backoff = 500;
  }

  start() {
    this.loop();
    return this;
  }

  stop() {
    this.stopped = true;
    this.controller?.abort();
  }

  /** Resumes from `id` (after a reload of the report). */
  restartFrom(id) {
    this.lastId = id;
    this.controller?.abort();
  }

  async loop() {
    while (!this.stopped) {
      try {
        await this.read();
        this.backoff = 500;
      } catch (error) {
        if (this.stopped) return;
        this.hooks.onState?.("reconnecting");
      }
      if (this.stopped) return;
      await new Promise((resolve) => setTimeout(resolve, this.backoff));
      this.backoff = Math.min(this.backoff * 2, 8000);
    }
  }

  async read() {
    const token = await currentToken();
    if (!token) throw new Error("signed out");
    this.controller = new AbortController();
    const headers = { authorization: `Bearer ${token}`, accept: "text/event-stream" };
    if (this.lastId) headers["last-event-id"] = this.lastId;
    const response = await fetch("/v1/stream", { headers, signal: this.controller.signal, cache: "no-store" });
    if (!response.ok) throw new Error(`stream answered ${response.status}`);
    this.hooks.onState?.("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        this.dispatch(block);
      }
    }
    this.hooks.onState?.("reconnecting");
  }

  dispatch(block) {
    let kind = "message";
    let id = null;
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") kind = value;
      else if (field === "id") id = value;
      else if (field === "data") data.push(value);
    }
    if (id) this.lastId = id;
    if (kind === "gap") {
      this.hooks.onGap?.();
      return;
    }
    if (kind === "reauthenticate") return;
    if (!data.length) return;
    let parsed;
    try {
      parsed = JSON.parse(data.join("\n"));
    } catch {
      return;
    }
    this.onEvent(kind, parsed, id);
  }
}
