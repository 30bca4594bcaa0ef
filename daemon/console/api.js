// Calls to the admin API with the signed-in user's token. Errors are RFC 9457 problem+json;
// a refusal is shown in words from its rule code (and the rule's own detail).
import { currentToken } from "./auth.js";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || "error";
    this.problem = problem;
  }
}

/** Words for the rule codes a supervisor meets. */
const RULES = {
  "monitor-limit": "The monitor limit for this channel is reached",
  "barge-limit": "Another supervisor is already barged in",
  "invalid-state": "The conversation's state does not allow this",
  "own-conversation": "You are this conversation's agent",
  "already-participating": "You already take part in this conversation",
  "not-joined": "Join the conversation first",
  "not-monitoring": "Monitor the conversation first",
  "not-participating": "You take no part in this conversation",
  "channel-not-supported": "This channel does not support it",
  "same-queue": "The conversation is already in that queue",
  "same-agent": "That agent already has the conversation",
  "presence-not-allowed": "The agent's presence does not allow assignment",
  "capacity-exceeded": "The agent has no free capacity",
  "target-is-bot": "A bot cannot take a transfer",
  "not-in-queue": "The agent does not serve this conversation's queue",
  "confirmation-required": "Confirmation is required",
  "no-media-endpoint": "You have no phone endpoint for calls",
  "not-found": "The conversation is not (or no longer) visible to you",
  "forbidden": "Your role does not allow this",
  "rate-limited": "Too many requests; try again shortly",
  "busy": "The server is busy; try again",
};

/** A refusal in words: the rule's name and its own explanation. */
export function refusalText(code, detail) {
  const rule = RULES[code] || `Refused (${code})`;
  return detail ? `${rule}: ${detail}` : rule;
}

export async function call(method, path, body, extraHeaders = {}) {
  const headers = { ...extraHeaders };
  const token = await currentToken();
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    throw new ApiError(response.status, typeof data === "object" ? data : { detail: String(data) });
  }
  return data;
}

/** Every page of a list, walked with its cursor (one snapshot: nothing skipped or repeated). */
export async function walk(path, key) {
  const separator = path.includes("?") ? "&" : "?";
  let page = await call("GET", `${path}${separator}limit=1000`);
  const first = page;
  const rows = [...page[key]];
  while (page.next_cursor) {
    page = await call("GET", `${path}${separator}limit=1000&cursor=${encodeURIComponent(page.next_cursor)}`);
    rows.push(...page[key]);
  }
  return { rows, first };
}
