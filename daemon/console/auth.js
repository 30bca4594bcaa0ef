// Sign-in: OpenID Connect authorization code with PKCE against the configured provider
// (Keycloak in production), tokens renewed silently with the refresh token before they
// expire; or, when the daemon accepts `switchboard token` tokens, a development sign-in that
// takes one pasted in. The session lives in this tab's sessionStorage only.

const SESSION = "switchboard.session";
const PENDING = "switchboard.pending-sign-in";
/** Renew this long before the access token expires (at most a quarter of its life). */
const RENEW_MARGIN_MS = 30_000;

function margin(session) {
  return Math.min(RENEW_MARGIN_MS, (session.lifetime || 300_000) / 4);
}

let settings = null;
let discovery = null;
let renewing = null;
let renewTimer = null;
const listeners = new Set();

function base64url(bytes) {
  let text = "";
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomText(length = 32) {
  return base64url(crypto.getRandomValues(new Uint8Array(length)));
}

/** The claims of a JWT (not verified here: the daemon verifies every token it gets). */
export function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(
      Array.from(atob(part), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
    );
    return JSON.parse(json);
  } catch {
    return {};
  }
}

function load() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION) || "null");
  } catch {
    return null;
  }
}

function save(session, { quiet = false } = {}) {
  if (session) sessionStorage.setItem(SESSION, JSON.stringify(session));
  else sessionStorage.removeItem(SESSION);
  schedule(session);
  if (!quiet) for (const listener of listeners) listener(session);
}

/** Calls `listener(session)` whenever the session changes (signed in, renewed, signed out). */
export function onSession(listener) {
  listeners.add(listener);
}

function redirectUri() {
  return `${location.origin}/console/`;
}

async function provider() {
  if (discovery) return discovery;
  const response = await fetch(`${settings.oidc_issuer}/.well-known/openid-configuration`);
  if (!response.ok) throw new Error(`the OpenID provider's discovery answered ${response.status}`);
  discovery = await response.json();
  return discovery;
}

function fromTokenResponse(body, previous) {
  const expiresIn = Number(body.expires_in || 300);
  return {
    kind: "oidc",
    access_token: body.access_token,
    refresh_token: body.refresh_token || previous?.refresh_token || null,
    id_token: body.id_token || previous?.id_token || null,
    expires_at: Date.now() + expiresIn * 1000,
    lifetime: expiresIn * 1000,
  };
}

/** Reads the settings and finishes a sign-in the provider redirected back from. */
export async function start(consoleSettings) {
  settings = consoleSettings;
  const query = new URLSearchParams(location.search);
  if (query.has("code") || query.has("error")) {
    const pending = JSON.parse(sessionStorage.getItem(PENDING) || "null");
    sessionStorage.removeItem(PENDING);
    history.replaceState(null, "", redirectUri());
    if (query.has("error")) throw new Error(`sign-in failed: ${query.get("error_description") || query.get("error")}`);
    if (!pending || pending.state !== query.get("state")) throw new Error("sign-in failed: the answer does not match this tab's request");
    const endpoints = await provider();
    const response = await fetch(endpoints.token_endpoint, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        grant_type: "authorization_code",
        code: query.get("code"),
        redirect_uri: redirectUri(),
        client_id: settings.client_id,
        code_verifier: pending.verifier,
      }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(`sign-in failed: ${body.error_description || body.error || response.status}`);
    if (body.id_token && claims(body.id_token).nonce !== pending.nonce) throw new Error("sign-in failed: the ID token's nonce does not match");
    save(fromTokenResponse(body, null));
  } else {
    schedule(load());
  }
  return load();
}

/** Sends the browser to the provider (authorization code with PKCE, S256). */
export async function signIn() {
  const endpoints = await provider();
  const verifier = randomText(48);
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const pending = { verifier, state: randomText(), nonce: randomText() };
  sessionStorage.setItem(PENDING, JSON.stringify(pending));
  const url = new URL(endpoints.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: "code",
    client_id: settings.client_id,
    redirect_uri: redirectUri(),
    scope: settings.scope,
    state: pending.state,
    nonce: pending.nonce,
    code_challenge: challenge,
    code_challenge_method: "S256",
  }).toString();
  location.assign(url.toString());
}

/** The development sign-in: a token from `switchboard token`. */
export function signInWithToken(token) {
  const exp = Number(claims(token).exp || 0);
  if (!exp) throw new Error("that is not a token from `switchboard token` (no exp claim)");
  if (exp * 1000 <= Date.now()) throw new Error("that token has expired; mint a new one");
  save({ kind: "development", access_token: token, expires_at: exp * 1000 });
}

export async function signOut() {
  const session = load();
  // Quietly: this function navigates itself (to the provider's sign-out, or back here).
  save(null, { quiet: true });
  if (session?.kind === "oidc" && settings?.oidc_issuer) {
    try {
      const endpoints = await provider();
      if (endpoints.end_session_endpoint) {
        const url = new URL(endpoints.end_session_endpoint);
        url.search = new URLSearchParams({
          client_id: settings.client_id,
          post_logout_redirect_uri: redirectUri(),
          ...(session.id_token ? { id_token_hint: session.id_token } : {}),
        }).toString();
        location.assign(url.toString());
        return;
      }
    } catch {
      // Signed out here in any case.
    }
  }
  location.assign(redirectUri());
}

async function renew() {
  const session = load();
  if (!session || session.kind !== "oidc" || !session.refresh_token) return session;
  const endpoints = await provider();
  const response = await fetch(endpoints.token_endpoint, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "refresh_token",
      refresh_token: session.refresh_token,
      client_id: settings.client_id,
    }),
  });
  if (!response.ok) {
    // The provider's session ended: sign in again.
    save(null);
    return null;
  }
  const next = fromTokenResponse(await response.json(), session);
  save(next);
  return next;
}

function schedule(session) {
  clearTimeout(renewTimer);
  if (!session || session.kind !== "oidc" || !session.refresh_token) return;
  const delay = Math.max(1000, session.expires_at - Date.now() - margin(session));
  renewTimer = setTimeout(() => currentToken(true).catch(() => {}), delay);
}

/** A valid access token, renewed first when it is about to expire; null when signed out. */
export async function currentToken(force = false) {
  const session = load();
  if (!session) return null;
  const soon = session.expires_at - Date.now() < margin(session);
  if (session.kind === "oidc" && (soon || force) && session.refresh_token) {
    renewing ||= renew().finally(() => {
      renewing = null;
    });
    const renewed = await renewing;
    return renewed?.access_token || null;
  }
  if (session.expires_at <= Date.now()) {
    save(null);
    return null;
  }
  return session.access_token;
}

/** Who is signed in: the token's subject and a name to show. */
export function user() {
  const session = load();
  if (!session) return null;
  const c = claims(session.access_token);
  return { id: c.sub, name: c.name || c.preferred_username || c.sub, kind: session.kind };
}
