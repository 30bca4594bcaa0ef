// The ongoing conversations table, virtualised: only the rows in view (plus a margin) exist
// in the DOM, positioned inside a spacer as tall as every row together, so 5 000 rows paint
// as fast as 50. Rows are reused as the view scrolls; every cell is text.
import { h, fill, duration } from "./dom.js";

const ROW_HEIGHT = 36;
const OVERSCAN = 8;

export const COLUMNS = [
  { key: "subject", label: "Subject" },
  { key: "customer", label: "Customer" },
  { key: "state", label: "Status" },
  { key: "agent", label: "Agent" },
  { key: "queue", label: "Queue" },
  { key: "channel", label: "Channel" },
  { key: "wait", label: "Wait" },
  { key: "handle", label: "Handle" },
  { key: "sentiment", label: "Sentiment" },
  { key: "supervisors", label: "Supervised by" },
];

export class ConversationTable {
  /**
   * @param {HTMLElement} root where the table goes
   * @param {{onOpen: (id: string) => void, onSort: (key: string) => void,
   *          times: (row: object) => {wait: number, handle: number},
   *          attention: (row: object, times: object) => string[]}} options
   */
  constructor(root, options) {
    this.options = options;
    this.rows = [];
    this.pool = [];
    this.sort = { key: "created", descending: true };
    this.headers = COLUMNS.map((column) =>
      h(
        "div",
        { role: "columnheader", class: `cell col-${column.key}`, "aria-sort": "none" },
        h("button", { type: "button", class: "sort", onclick: () => options.onSort(column.key) }, column.label),
      ),
    );
    this.body = h("div", { role: "rowgroup", class: "body" });
    this.viewport = h("div", { class: "viewport" }, this.body);
    this.table = h(
      "div",
      { role: "table", class: "conversations", "aria-label": "Ongoing conversations", "aria-rowcount": "1" },
      h("div", { role: "rowgroup", class: "head" }, h("div", { role: "row", class: "row header", "aria-rowindex": "1" }, this.headers)),
      this.viewport,
    );
    this.empty = h("p", { class: "empty", hidden: true }, "No ongoing conversations match.");
    root.append(this.table, this.empty);
    this.viewport.addEventListener("scroll", () => this.render(), { passive: true });
    new ResizeObserver(() => this.render()).observe(this.viewport);
  }

  setSort(sort) {
    this.sort = sort;
    COLUMNS.forEach((column, index) => {
      const sorted = sortKey(column.key) === sort.key;
      this.headers[index].setAttribute("aria-sort", sorted ? (sort.descending ? "descending" : "ascending") : "none");
    });
  }

  setRows(rows) {
    this.rows = rows;
    this.body.style.height = `${rows.length * ROW_HEIGHT}px`;
    this.table.setAttribute("aria-rowcount", String(rows.length + 1));
    this.empty.hidden = rows.length > 0;
    this.render();
  }

  /** Draws the rows in view. */
  render() {
    const top = this.viewport.scrollTop;
    const height = this.viewport.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((top + height) / ROW_HEIGHT) + OVERSCAN);
    const needed = last - first;
    while (this.pool.length < needed) this.pool.push(this.makeRow());
    const focused = document.activeElement?.dataset?.conversation;
    for (let i = 0; i < this.pool.length; i += 1) {
      const element = this.pool[i];
      if (i >= needed) {
        if (element.isConnected) element.remove();
        continue;
      }
      const index = first + i;
      this.fillRow(element, this.rows[index], index);
      if (!element.isConnected) this.body.append(element);
    }
    if (focused) {
      const again = this.pool.find((row) => row.dataset.conversation === focused && row.isConnected);
      if (again && document.activeElement !== again) again.focus({ preventScroll: true });
    }
  }

  /** Updates only the ticking cells. */
  tick() {
    for (const element of this.pool) {
      if (!element.isConnected) continue;
      const row = this.rows[Number(element.dataset.index)];
      if (row) this.fillTimes(element, row);
    }
  }

  makeRow() {
    const cells = Object.fromEntries(COLUMNS.map((column) => [column.key, h("div", { role: "cell", class: `cell col-${column.key}` })]));
    const element = h("div", { role: "row", class: "row", tabindex: "0" }, Object.values(cells));
    element.cells = cells;
    element.addEventListener("click", () => this.options.onOpen(element.dataset.conversation));
    element.addEventListener("keydown", (event) => {
      const index = Number(element.dataset.index);
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        this.options.onOpen(element.dataset.conversation);
      } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        this.focusIndex(index + (event.key === "ArrowDown" ? 1 : -1));
      }
    });
    return element;
  }

  focusIndex(index) {
    if (index < 0 || index >= this.rows.length) return;
    const top = index * ROW_HEIGHT;
    if (top < this.viewport.scrollTop) this.viewport.scrollTop = top;
    else if (top + ROW_HEIGHT > this.viewport.scrollTop + this.viewport.clientHeight) {
      this.viewport.scrollTop = top + ROW_HEIGHT - this.viewport.clientHeight;
    }
    this.render();
    const target = this.pool.find((row) => Number(row.dataset.index) === index && row.isConnected);
    target?.focus({ preventScroll: true });
  }

  fillRow(element, row, index) {
    element.dataset.index = String(index);
    element.dataset.conversation = row.id;
    element.setAttribute("aria-rowindex", String(index + 2));
    element.style.transform = `translateY(${index * ROW_HEIGHT}px)`;
    const c = element.cells;
    const label = row.subject || "(no subject)";
    fill(c.subject, label);
    fill(c.customer, row.customer?.name || row.customer?.id || "");
    fill(c.state, row.state);
    fill(c.agent, row.agent_name || row.agent || "—");
    fill(c.queue, row.queue_name || row.queue);
    fill(c.channel, row.channel);
    const sentiment = row.sentiment?.label;
    fill(c.sentiment, sentiment ? `${sentiment} (${row.sentiment.score.toFixed(2)})` : "—");
    c.sentiment.dataset.sentiment = sentiment || "none";
    fill(c.supervisors, (row.supervisors || []).map((seat) => `${seat.id} (${seat.mode})`).join(", ") || "—");
    element.setAttribute("aria-label", `${label}, ${row.customer?.name || row.customer?.id || ""}, ${row.state}`);
    this.fillTimes(element, row);
  }

  fillTimes(element, row) {
    const times = this.options.times(row);
    fill(element.cells.wait, duration(times.wait));
    fill(element.cells.handle, row.accepted_at ? duration(times.handle) : "—");
    const reasons = this.options.attention(row, times);
    element.classList.toggle("attention", reasons.length > 0);
    const marker = element.cells.subject;
    marker.title = reasons.join("; ");
    const flag = marker.querySelector(".flag");
    if (reasons.length && !flag) {
      marker.prepend(h("span", { class: "flag" }, "⚑ ", h("span", { class: "visually-hidden" }, "needs attention: "), ""));
    } else if (!reasons.length && flag) {
      flag.remove();
    }
  }
}

/** The report's sort key for a column (columns without one sort by their text). */
export function sortKey(column) {
  return { wait: "wait", handle: "handle", sentiment: "sentiment" }[column] || column;
}
