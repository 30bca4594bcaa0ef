// The conversation view: transcript and timeline, participants, delivery state, and the
// supervision actions. Every button is enabled from the conversation's `actions` (the
// engine's own rules, run dry for this supervisor); a refusal is shown in words.
import { h, fill, announce } from "./dom.js";
import { call, refusalText } from "./api.js";

const LABELS = {
  monitor: "Monitor",
  whisper: "Whisper",
  join: "Join",
  barge: "Barge in",
  leave: "Leave",
  assign: "Assign…",
  transfer: "Transfer…",
  "force-close": "Force close…",
};

function authorName(author) {
  if (!author) return "";
  if (author.kind === "customer") return "Customer";
  return author.id ? `${author.kind} ${author.id}` : author.kind;
}

/** One timeline line in words (text is text: never markup). */
function line(entry) {
  const d = entry.details || {};
  const time = new Date(entry.at).toLocaleTimeString();
  let what;
  switch (entry.event) {
    case "message":
      what = [h("strong", {}, `${authorName(d.author)}: `), d.text ?? ""];
      break;
    case "whisper":
      what = [h("strong", {}, `Whisper from ${d.supervisor}: `), d.text ?? ""];
      break;
    case "receipt":
      what = `Delivery: ${d.status}${d.message_id ? ` (${d.message_id})` : ""}`;
      break;
    case "supervision-started":
      what = `${d.supervisor} started ${d.mode}`;
      break;
    case "supervision-ended":
      what = `${d.supervisor} stopped ${d.mode} (${d.reason}${d.error ? `: ${d.error.detail || d.error.code || ""}` : ""})`;
      break;
    case "state-changed":
      what = `State: ${d.from} → ${d.to}`;
      break;
    default:
      what = `${entry.event.replace(/-/g, " ")}`;
  }
  return h(
    "li",
    { class: `line ${entry.event} ${entry.visibility}` },
    h("time", { datetime: entry.at }, time),
    " ",
    h("span", { class: "visibility" }, entry.visibility),
    " ",
    h("span", { class: "what" }, what),
  );
}

export class ConversationView {
  /**
   * @param {HTMLElement} root the panel
   * @param {{onClose: () => void, onChanged: () => void}} options
   */
  constructor(root, options) {
    this.root = root;
    this.options = options;
    this.id = null;
    this.detail = null;
    this.refreshing = null;
  }

  async open(id) {
    this.id = id;
    this.root.hidden = false;
    this.options.onOpen?.();
    await this.refresh();
    this.root.querySelector("h2")?.focus();
  }

  close() {
    this.id = null;
    this.detail = null;
    this.root.hidden = true;
    fill(this.root);
    this.options.onClose();
  }

  /** Reads the conversation again (its actions change with every event). */
  async refresh() {
    if (!this.id) return;
    const id = this.id;
    this.refreshing ||= call("GET", `/v1/conversations/${encodeURIComponent(id)}`)
      .then((detail) => {
        if (this.id === id) {
          this.detail = detail;
          this.render();
        }
      })
      .catch((error) => {
        if (error.status === 404 && this.id === id) {
          announce("The conversation is no longer visible to you.", "error");
          this.close();
        } else {
          announce(error.message, "error");
        }
      })
      .finally(() => {
        this.refreshing = null;
      });
    return this.refreshing;
  }

  /** A timeline line from the stream, for this conversation. */
  append(item) {
    if (!this.detail || item.conversation !== this.id) return;
    this.detail.timeline.push(item);
    this.root.querySelector("ol.timeline")?.append(line(item));
    this.refresh();
  }

  async act(method, path, body, done) {
    try {
      const result = await call(method, `/v1/conversations/${encodeURIComponent(this.id)}${path}`, body);
      announce(done(result));
      await this.refresh();
      this.options.onChanged();
      return result;
    } catch (error) {
      announce(refusalText(error.code, error.message), "error");
      await this.refresh();
      return null;
    }
  }

  button(action, onclick, label = LABELS[action]) {
    const state = this.detail.actions?.[action] || { allowed: false, code: "forbidden" };
    const why = state.allowed
      ? null
      : state.code === "monitor-limit" && state.holders?.length
        ? `Monitored by ${state.holders.join(", ")}`
        : refusalText(state.code, state.detail);
    return h(
      "span",
      { class: "action" },
      h(
        "button",
        { type: "button", disabled: !state.allowed, onclick, "data-action": action, title: why || undefined, "aria-describedby": why ? `why-${action}` : undefined },
        label,
      ),
      why ? h("span", { class: "why", id: `why-${action}` }, why) : null,
    );
  }

  render() {
    const d = this.detail;
    const mySeat = (d.supervisors || []).find((seat) => seat.id === this.me);
    const heading = h("h2", { tabindex: "-1" }, d.subject || "(no subject)");
    const facts = h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Customer"), h("dd", {}, d.customer?.name || d.customer?.id || ""),
      h("dt", {}, "Channel"), h("dd", {}, d.channel),
      h("dt", {}, "Status"), h("dd", {}, d.state),
      h("dt", {}, "Queue"), h("dd", {}, d.queue_name || d.queue),
      h("dt", {}, "Agent"), h("dd", {}, d.agent_name || d.agent || "—"),
      h("dt", {}, "Delivery"), h("dd", { class: "delivery" }, d.last_delivery ? `${d.last_delivery.status} (${d.last_delivery.message_id})` : "—"),
      h("dt", {}, "You"), h("dd", {}, mySeat ? `${mySeat.mode}${mySeat.media ? `, media ${mySeat.media}` : ""}` : "not taking part"),
    );
    const participants = h(
      "ul",
      { class: "participants", "aria-label": "Participants" },
      (d.participants || []).map((p) => h("li", {}, `${p.id} — ${p.role}${p.mode ? ` (${p.mode})` : ""}`)),
    );
    const actions = h(
      "div",
      { class: "actions", role: "group", "aria-label": "Supervision actions" },
      this.button("monitor", () => this.act("POST", "/monitor", undefined, () => "Monitoring silently.")),
      this.button("join", () => this.act("POST", "/join", { mode: "internal" }, () => "Joined internally.")),
      this.button("join", () => this.act("POST", "/join", { mode: "public" }, () => "Joined publicly."), "Join publicly"),
      this.button("barge", () => this.act("POST", "/barge", undefined, () => "Barged in.")),
      this.button("leave", () => this.act("POST", "/leave", undefined, () => "Left the conversation.")),
      this.button("assign", () => this.showAssign()),
      this.button("transfer", () => this.showTransfer()),
      this.button("force-close", () => this.showForceClose()),
    );
    const composer = this.composer(mySeat);
    this.picker = h("div", { class: "picker" });
    const timeline = h("ol", { class: "timeline", "aria-label": "Transcript and timeline" }, (d.timeline || []).map(line));
    fill(
      this.root,
      h("div", { class: "detail-head" }, heading, h("button", { type: "button", class: "close", onclick: () => this.close() }, "Close")),
      facts,
      h("h3", {}, "Participants"),
      participants,
      h("h3", {}, "Actions"),
      actions,
      this.picker,
      composer,
      h("h3", {}, "Transcript and timeline"),
      timeline,
    );
  }

  composer(mySeat) {
    const whisper = this.detail.actions?.whisper?.allowed;
    const write = this.detail.actions?.message?.allowed;
    const publicSeat = mySeat && ["consult-public", "barge"].includes(mySeat.mode);
    const kinds = [
      whisper ? h("option", { value: "whisper" }, "Whisper to the agent") : null,
      write ? h("option", { value: "internal" }, "Internal note") : null,
      write && publicSeat ? h("option", { value: "public" }, "Message to the customer") : null,
    ].filter(Boolean);
    if (!kinds.length) {
      const why = this.detail.actions?.whisper;
      return h("p", { class: "why" }, `Writing: ${refusalText(why?.code, why?.detail)}`);
    }
    const text = h("textarea", { id: "compose-text", rows: "2", required: true });
    const kind = h("select", { id: "compose-kind" }, kinds);
    const form = h(
      "form",
      { class: "composer" },
      h("label", { for: "compose-kind" }, "Send as"),
      kind,
      h("label", { for: "compose-text" }, "Text"),
      text,
      h("button", { type: "submit" }, "Send"),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = text.value.trim();
      if (!body) return;
      const sent =
        kind.value === "whisper"
          ? await this.act("POST", "/whisper", { text: body }, () => "Whispered to the agent.")
          : await this.act("POST", "/message", { text: body, visibility: kind.value }, () => "Sent.");
      if (sent) text.value = "";
    });
    return form;
  }

  showAssign() {
    const t = this.detail.targets;
    const describe = (agent) =>
      `${agent.name || agent.id} — ${agent.presence}, ${agent.capacity_total - agent.capacity_used} of ${agent.capacity_total} free${agent.allowed ? "" : ` (${refusalText(agent.code)})`}`;
    const select = h(
      "select",
      { id: "assign-target" },
      h("optgroup", { label: "Queues" }, t.assign_queues.map((q) => h("option", { value: `queue:${q.id}`, disabled: !q.allowed }, `${q.name || q.id}${q.allowed ? "" : ` (${refusalText(q.code)})`}`))),
      h("optgroup", { label: "Agents" }, t.assign_agents.map((a) => h("option", { value: `agent:${a.id}` }, describe(a)))),
    );
    const presence = h("input", { type: "checkbox", id: "override-presence" });
    const capacity = h("input", { type: "checkbox", id: "override-capacity" });
    const form = h(
      "form",
      { class: "assign", "aria-label": "Assign" },
      h("label", { for: "assign-target" }, "Assign to"),
      select,
      h("label", {}, presence, " Override the presence check"),
      h("label", {}, capacity, " Override the capacity check"),
      h("button", { type: "submit" }, "Assign"),
      h("button", { type: "button", onclick: () => fill(this.picker) }, "Cancel"),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const [kind, id] = select.value.split(/:(.*)/s);
      const body = kind === "queue" ? { queue: id } : { agent: id, override_presence: presence.checked, override_capacity: capacity.checked };
      const result = await this.act("POST", "/assign", body, (r) =>
        r.capacity_exceeded_by ? `Assigned; the agent's capacity is now exceeded by ${r.capacity_exceeded_by}.` : `Assigned${r.overrides?.length ? ` (overrode ${r.overrides.join(", ")})` : ""}.`,
      );
      if (result) fill(this.picker);
    });
    fill(this.picker, form);
    select.focus();
  }

  showTransfer() {
    const agents = this.detail.targets.transfer_agents;
    const select = h(
      "select",
      { id: "transfer-target" },
      agents.map((a) =>
        h("option", { value: a.id, disabled: !a.allowed }, `${a.name || a.id} — ${a.presence}, ${a.capacity_total - a.capacity_used} of ${a.capacity_total} free${a.allowed ? "" : ` (${refusalText(a.code)})`}`),
      ),
    );
    const form = h(
      "form",
      { class: "transfer", "aria-label": "Transfer" },
      h("label", { for: "transfer-target" }, "Transfer to"),
      select,
      h("button", { type: "submit" }, "Transfer"),
      h("button", { type: "button", onclick: () => fill(this.picker) }, "Cancel"),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = await this.act("POST", "/transfer", { agent: select.value }, (r) =>
        r.capacity_exceeded_by ? `Transferred; the agent's capacity is exceeded by ${r.capacity_exceeded_by}.` : "Transferred.",
      );
      if (result) fill(this.picker);
    });
    fill(this.picker, form);
    select.focus();
  }

  showForceClose() {
    const reason = h("input", { type: "text", id: "close-reason", required: true, maxlength: "500" });
    const form = h(
      "form",
      { class: "force-close", role: "alertdialog", "aria-label": "Confirm force close", "aria-describedby": "close-warning" },
      h("p", { id: "close-warning" }, "Force closing ends the customer's conversation on its channel. This cannot be undone."),
      h("label", { for: "close-reason" }, "Reason"),
      reason,
      h("button", { type: "submit", class: "danger" }, "Force close"),
      h("button", { type: "button", onclick: () => fill(this.picker) }, "Cancel"),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = await this.act("POST", "/force-close", { reason: reason.value.trim(), confirm: true }, () => "Conversation force-closed.");
      if (result) fill(this.picker);
    });
    fill(this.picker, form);
    reason.focus();
  }
}
