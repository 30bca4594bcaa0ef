// What the console's browser tests and benchmark share: a real OpenID provider on loopback
// (oidc-provider, issuing RS256 JWT access tokens with Keycloak's claims), a real daemon
// (the debug or release binary, the shipped configuration with test ports), Chatwoot
// webhooks through the daemon's door, and Debian's chromium driven by playwright-core.
import { spawn, execFileSync } from "node:child_process";
import { generateKeyPairSync, randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync, openSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Provider from "oidc-provider";
import { chromium } from "playwright-core";

export const ROOT = new URL("../../", import.meta.url).pathname;
const TARGET = process.env.CARGO_TARGET_DIR || join(ROOT, "target");
export const BINARY = process.env.SWITCHBOARD_BIN || join(TARGET, process.env.SWITCHBOARD_PROFILE || "debug", "switchboard");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
// oidc-provider wants resource indicators as absolute URIs (Keycloak audiences are client ids).
export const AUDIENCE = "urn:switchboard:api";
/** The bundled plugins: as the daemon's build script builds them, or as the Rust tests do. */
export const PLUGINS =
  process.env.SWITCHBOARD_PLUGINS ||
  [join(ROOT, "target/plugins/wasm32-wasip2/plugin"), join(TARGET, "wasm-plugins/wasm32-wasip2/plugin")].find((dir) =>
    existsSync(join(dir, "web_chat.wasm")),
  );

export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

/** The people the provider knows: Keycloak-style roles and groups. */
const PEOPLE = {
  "sup-sam": { name: "Sam Rivera", roles: ["supervisor"], groups: ["/support"] },
  "sup-sue": { name: "Sue Chen", roles: ["supervisor"], groups: ["/support"] },
  "sup-bea": { name: "Bea Novak", roles: ["supervisor"], groups: ["/billing"] },
};

/**
 * An OpenID provider on loopback for the console's client: authorization code with PKCE,
 * refresh tokens, access tokens as RS256 JWTs for audience `switchboard` living
 * `accessTokenSeconds`, so that renewal happens during a test.
 */
export async function startProvider({ consolePort, accessTokenSeconds = 20 }) {
  const port = await freePort();
  const issuer = `http://127.0.0.1:${port}`;
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: "jwk" }), kid: "console-test", use: "sig", alg: "RS256" };
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: "switchboard-console",
        token_endpoint_auth_method: "none",
        redirect_uris: [`http://127.0.0.1:${consolePort}/console/`],
        post_logout_redirect_uris: [`http://127.0.0.1:${consolePort}/console/`],
        grant_types: ["authorization_code", "refresh_token"],
        response_types: ["code"],
      },
    ],
    jwks: { keys: [jwk] },
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => AUDIENCE,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: "openid profile",
          audience: AUDIENCE,
          accessTokenTTL: accessTokenSeconds,
          accessTokenFormat: "jwt",
          jwt: { sign: { alg: "RS256" } },
        }),
      },
    },
    issueRefreshToken: (_ctx, client) => client.grantTypeAllowed("refresh_token"),
    clientBasedCORS: () => true,
    findAccount: (_ctx, sub) => ({
      accountId: sub,
      claims: () => ({ sub, name: PEOPLE[sub]?.name || sub, preferred_username: sub }),
    }),
    extraTokenClaims: (_ctx, token) => {
      const person = PEOPLE[token.accountId] || { roles: [], groups: [] };
      return { realm_access: { roles: person.roles }, groups: person.groups, preferred_username: token.accountId };
    },
    ttl: { RefreshToken: 3600, Session: 3600, Grant: 3600, Interaction: 600 },
  });
  provider.proxy = false;
  const server = provider.listen(port);
  await new Promise((resolve) => server.once("listening", resolve));
  const { d, p, q, dp, dq, qi, ...publicJwk } = jwk;
  return { issuer, port, publicJwks: { keys: [publicJwk] }, close: () => new Promise((r) => server.close(r)) };
}

/** The shipped configuration, pointed at test ports, a fresh store and the provider. */
export function writeConfig(dir, { apiPort, doorPort, issuer, jwksFile, monitorLease = "4s", extra = "" }) {
  let text = readFileSync(join(ROOT, "config/switchboard.toml"), "utf8");
  text = text
    .replace('listen = "127.0.0.1:8080"', `listen = "127.0.0.1:${apiPort}"`)
    .replace('webhook_listen = "127.0.0.1:8081"', `webhook_listen = "127.0.0.1:${doorPort}"`)
    .replace('path = "./data"', `path = "${join(dir, "data")}"`)
    .replaceAll('file = "../target/plugins/wasm32-wasip2/plugin/', `file = "${PLUGINS}/`)
    .replace('issuer = "https://keycloak.switchboard.local/realms/switchboard"', `issuer = "${issuer}"\njwks_file = "${jwksFile}"`)
    .replace('audience = "switchboard"', `audience = "${AUDIENCE}"`)
    .replace('closed_retention = "1h"', `closed_retention = "1h"\nmonitor_lease = "${monitorLease}"`)
    .replace("[plugins.web-chat.config]", "allow_unsigned = true\n[plugins.web-chat.config]")
    .replace("[policy.web]\nmonitor_limit = 5", "[policy.web]\nmonitor_limit = 1");
  text += `\n[delivery]\nenabled = false\n\n[console]\noidc_issuer = "${issuer}"\nclient_id = "switchboard-console"\nattention_wait = "1h"\n${extra}\n`;
  const file = join(dir, "switchboard.toml");
  writeFileSync(file, text);
  return file;
}

export class Daemon {
  constructor(config, apiPort, doorPort, log) {
    Object.assign(this, { config, apiPort, doorPort, log, child: null });
  }

  static async start(options = {}) {
    const dir = mkdtempSync(join(tmpdir(), "switchboard-console-"));
    const apiPort = await freePort();
    const doorPort = await freePort();
    const provider = await startProvider({ consolePort: apiPort, accessTokenSeconds: options.accessTokenSeconds });
    const jwksFile = join(dir, "jwks.json");
    writeFileSync(jwksFile, JSON.stringify(provider.publicJwks));
    const config = writeConfig(dir, { apiPort, doorPort, issuer: provider.issuer, jwksFile, ...options });
    const daemon = new Daemon(config, apiPort, doorPort, join(dir, "daemon.log"));
    daemon.provider = provider;
    daemon.dir = dir;
    await daemon.run();
    return daemon;
  }

  get url() {
    return `http://127.0.0.1:${this.apiPort}`;
  }

  async run() {
    if (!existsSync(BINARY)) throw new Error(`no daemon binary at ${BINARY}: cargo build -p switchboard first`);
    this.child = spawn(BINARY, ["serve", "--config", this.config], {
      stdio: ["ignore", "ignore", openSync(this.log, "a")],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" },
    });
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        const response = await fetch(`${this.url}/readyz`);
        if (response.ok) return;
      } catch {
        // Not listening yet.
      }
      if (this.child.exitCode !== null) throw new Error(`the daemon exited: ${readFileSync(this.log, "utf8")}`);
      if (Date.now() > deadline) throw new Error("the daemon never became ready");
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.kill("SIGTERM");
    await exited;
  }

  async restart() {
    await this.stop();
    await this.run();
  }

  async close() {
    await this.stop();
    await this.provider.close();
  }

  /** A token from `switchboard token` (the development sign-in takes these). */
  token(sub, role, team, ttl = "1h") {
    const args = ["token", "--config", this.config, "--sub", sub, "--role", role, "--ttl", ttl];
    if (team) args.push("--team", team);
    return execFileSync(BINARY, args, { encoding: "utf8" }).trim();
  }

  async api(method, path, token, body) {
    const response = await fetch(`${this.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : null };
  }

  /** A customer writes on Chatwoot's web widget: the webhook Chatwoot sends, through the door. */
  async customerWrites(conversation, name, content) {
    const payload = JSON.parse(readFileSync(join(ROOT, "tests/fixtures/chatwoot/message_created_incoming.json"), "utf8"));
    payload.id = Math.floor(Math.random() * 1e12);
    payload.content = content;
    payload.sender = { ...payload.sender, id: 1000 + conversation, name };
    payload.conversation = { ...payload.conversation, id: conversation };
    payload.created_at = new Date().toISOString();
    const response = await fetch(`http://127.0.0.1:${this.doorPort}/webhooks/web-chat`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-request-id": randomUUID() },
      body: JSON.stringify(payload),
    });
    if (!response.ok) throw new Error(`the door answered ${response.status}: ${await response.text()}`);
    return Date.now();
  }
}

export async function browser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
    headless: true,
  });
}

/** Signs in on the development sign-in with a `switchboard token` token. */
export async function developmentSignIn(page, daemon, token) {
  await page.goto(`${daemon.url}/console/`);
  await page.getByLabel("Development sign-in").fill(token);
  await page.getByRole("button", { name: "Sign in with this token" }).click();
  await page.waitForSelector("body[data-ready='true']");
  await page.waitForSelector("body[data-stream='live']");
}

/** Signs in through the OpenID provider's own login and consent pages. */
export async function providerSignIn(page, daemon, login) {
  await page.goto(`${daemon.url}/console/`);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await page.locator("input[name=login]").fill(login);
  await page.locator("input[name=password]").fill("any");
  await page.locator("button[type=submit]").click();
  await page.locator("button[type=submit]", { hasText: "Continue" }).click();
  await page.waitForSelector("body[data-ready='true']");
  await page.waitForSelector("body[data-stream='live']");
}
