// The staff web client end to end, in headless Chromium (the system's, never a downloaded one)
// against a real `medrelay serve`, driven by tests/tests/web_client.rs, which starts the server,
// enrols a CLI admin and passes invites in the environment:
//
//   MEDRELAY_URL        https://127.0.0.1:PORT (the page's origin)
//   MEDRELAY_WSS        wss://127.0.0.1:PORT (for the patient's CLI)
//   MEDRELAY_CA         the dev CA (for the patient's CLI only: the browser ignores certificate
//                       errors for this test's dev certificate)
//   MEDRELAY_CLIENT     the medrelay-client binary (the patient)
//   PATIENT_HOME        the patient's profile directory
//   STAFF_INVITE        an invite for staff "dr.lee"
//   ADMIN_INVITE        an invite for admin "admin2"
//   SCREENSHOTS         where to save a screenshot of each main screen
//
// What it proves: a staff member enrols (invite, password, TOTP from the QR screen's secret) and
// logs in; invites a patient; the patient (CLI) enrols, consents and messages; the staff member
// sees it live and answers; the patient receives the answer; safety numbers show; an admin
// enrols and uses the console (people, devices, teams, timeouts), changes the retention, runs a
// sweep and finds the change in the access-log view (filtered by action, then by actor), verifies
// the log and exports it as JSON lines and CSV; enables the org archive (a privacy officer) and
// changes its key: the browser's send is refused (ARCHIVE_REQUIRED), repeated sealed, opened
// offline with the officer's key; the changed key is announced with its fingerprint at the next
// login and nothing is sent until it is accepted; the shortened idle timeout
// logs the staff member off with the notice shown; the page's security headers are present,
// nothing is fetched from another origin, and the console shows no errors.

import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { createHash, createHmac } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const URL_ = env("MEDRELAY_URL");
const SHOTS = env("SCREENSHOTS");
mkdirSync(SHOTS, { recursive: true });
const PASSWORD = "a long staff password 42";
const ADMIN_PASSWORD = "a long admin password 42";
const STEP_TIMEOUT = 30000;

function log(...args) {
  console.log("[web-e2e]", ...args);
}

function totp(secret, now = Date.now()) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of secret.replace(/=+$/, "").toUpperCase()) {
    const v = alphabet.indexOf(c);
    if (v < 0) throw new Error("bad base32");
    bits += v.toString(2).padStart(5, "0");
  }
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(now / 1000 / 30)));
  const mac = createHmac("sha1", Buffer.from(bytes)).update(counter).digest();
  const offset = mac[mac.length - 1] & 15;
  const code = (mac.readUInt32BE(offset) & 0x7fffffff) % 1000000;
  return String(code).padStart(6, "0");
}

function patient(...args) {
  return execFileSync(env("MEDRELAY_CLIENT"), ["--home", env("PATIENT_HOME"), ...args], {
    env: { ...process.env, MEDRELAY_PASSPHRASE: "patient passphrase for the test", MEDRELAY_TEST_WEAK_KDF: "1" },
    stdio: ["ignore", "pipe", "pipe"],
    encoding: "utf8",
    timeout: 60000,
  });
}

function adminCli(...args) {
  return execFileSync(env("MEDRELAY_CLIENT"), ["--home", env("ADMIN_CLI_HOME"), ...args], {
    env: { ...process.env, MEDRELAY_PASSPHRASE: env("ADMIN_CLI_PASSPHRASE"), MEDRELAY_PASSWORD: env("ADMIN_CLI_PASSPHRASE"), MEDRELAY_TEST_WEAK_KDF: "1" },
    stdio: ["ignore", "pipe", "pipe"],
    encoding: "utf8",
    timeout: 60000,
  });
}

// The fingerprint people compare: SHA-256 of the archive public key, first 16 bytes, hex.
const fingerprintOf = (hex) => createHash("sha256").update(Buffer.from(hex, "hex")).digest("hex").slice(0, 32);

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  log("ok:", what);
}

const problems = [];
const watched = [];
function watch(page, name) {
  watched.push([page, name]);
  const origin = new URL(URL_).origin;
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") problems.push(`${name} console ${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`${name} page error: ${e.message}`));
  page.on("request", (r) => {
    const u = r.url();
    if (u.startsWith("data:")) return;
    if (new URL(u).origin !== origin) problems.push(`${name} requested another origin: ${u}`);
  });
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  log("screenshot", name);
}

const recoveryCodes = {};
async function enrolAndLogin(page, invite, password, name) {
  await page.getByLabel("Invite code").fill(invite);
  await page.getByLabel("New password").fill(password);
  await page.getByLabel("Repeat the password").fill(password);
  await shot(page, `${name}-enrol`);
  await page.getByRole("button", { name: "Set up" }).click();
  await page.getByRole("heading", { name: "Add your authenticator" }).waitFor({ timeout: 60000 });
  const secret = (await page.locator("#totp-secret").textContent()).trim();
  check(secret.length >= 16, `${name}: the TOTP secret is shown`);
  check((await page.locator("#totp-qr").getAttribute("src")).startsWith("data:image/svg+xml;base64,"), `${name}: the QR code is shown`);
  check((await page.locator("#totp-recovery li").count()) > 0, `${name}: recovery codes are shown`);
  recoveryCodes[name] = (await page.locator("#totp-recovery li").first().textContent()).trim();
  await shot(page, `${name}-totp`);
  await page.getByLabel("Six-digit code").fill(totp(secret));
  await page.getByRole("button", { name: "Log in" }).click();
  return secret;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
    // Only this test's development certificate; the server runs on a throwaway dev CA.
    "--ignore-certificate-errors",
  ],
});

try {
  // ---------------------------------------------------------------- staff: enrol and log in
  const staffCtx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1180, height: 820 } });
  const staff = await staffCtx.newPage();
  watch(staff, "staff");
  const response = await staff.goto(`${URL_}/`);
  const headers = response.headers();
  const csp = headers["content-security-policy"] || "";
  check(csp.includes("script-src 'self' 'wasm-unsafe-eval'"), "CSP allows scripts only from the origin (and wasm)");
  check(!csp.includes("unsafe-inline"), "CSP has no unsafe-inline");
  check(csp.includes("default-src 'none'") && csp.includes("frame-ancestors 'none'"), "CSP denies by default and forbids framing");
  check(csp.includes("connect-src 'self'"), "CSP connects only back to the origin");
  check((headers["strict-transport-security"] || "").includes("max-age="), "HSTS is set");
  check(headers["referrer-policy"] === "no-referrer", "referrer policy is no-referrer");
  check(headers["x-content-type-options"] === "nosniff", "nosniff is set");
  check(headers["x-frame-options"] === "DENY", "X-Frame-Options is DENY");
  const inline = await staff.evaluate(() => ({
    scripts: [...document.scripts].filter((s) => !s.src).length,
    styled: document.querySelectorAll("[style], style").length,
  }));
  check(inline.scripts === 0 && inline.styled === 0, "no inline scripts or styles in the page");

  await staff.getByRole("heading", { name: "Set up this browser" }).waitFor({ timeout: STEP_TIMEOUT });
  const staffSecret = await enrolAndLogin(staff, env("STAFF_INVITE"), PASSWORD, "staff");
  await staff.getByRole("heading", { name: "Inbox" }).waitFor({ timeout: STEP_TIMEOUT });
  check((await staff.locator("#who").textContent()).includes("dr.lee"), "staff is logged in as dr.lee");
  await shot(staff, "staff-inbox-empty");

  // ---------------------------------------------------------------- staff invites a patient
  await staff.getByText("Invite a patient").click();
  await staff.getByLabel("Patient handle").fill("alice");
  await staff.getByRole("button", { name: "Create invite" }).click();
  const code = (await staff.locator("#patient-invite-code").textContent({ timeout: STEP_TIMEOUT })).trim();
  check(code.length > 0, "the patient invite code is shown");
  patient("enroll", "--server", env("MEDRELAY_WSS"), "--ca", env("MEDRELAY_CA"), "--code", code);
  patient("consent", "accept");
  log("patient alice enrolled and consented (CLI)");

  // ---------------------------------------------------------------- live receive
  const question = "Is my biopsy back yet?";
  patient("send", "--to", "dr.lee", question);
  const row = staff.locator("#inbox button", { hasText: "alice" });
  await row.waitFor({ timeout: STEP_TIMEOUT });
  await staff.locator("#inbox .badge", { hasText: "1" }).waitFor({ timeout: STEP_TIMEOUT });
  check((await row.getAttribute("aria-label")).includes("1 unread"), "the inbox shows one unread message from alice");
  check((await row.textContent()).includes(question), "the inbox previews the message, received live");
  await shot(staff, "staff-inbox");
  await row.click();
  await staff.locator("#messages .msg.in", { hasText: question }).waitFor({ timeout: STEP_TIMEOUT });
  check((await staff.locator("#conv-consent").textContent()).includes("accepted"), "consent status is shown");
  check((await row.getAttribute("aria-label")) === "alice", "opening the conversation marks it read");

  // ---------------------------------------------------------------- answer; the patient receives it
  const answer = "Yes, and it is all clear.";
  await staff.getByLabel("Message", { exact: true }).fill(answer);
  await staff.keyboard.press("Control+Enter");
  await staff.locator("#messages .msg.out", { hasText: "Delivered to the server for 1 device" }).waitFor({ timeout: STEP_TIMEOUT });
  check(true, "the answer is stored by the server for the patient's device (delivery state shown)");
  await shot(staff, "staff-conversation");
  const received = patient("recv", "--wait", "10").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
  check(received.some((m) => m.text === answer && m.from === "dr.lee"), "the patient received the staff member's answer");

  // A second message from the patient, while the conversation is open: shown live.
  patient("send", "--to", "dr.lee", "Thank you!");
  await staff.locator("#messages .msg.in", { hasText: "Thank you!" }).waitFor({ timeout: STEP_TIMEOUT });
  check(true, "a message arriving in the open conversation is shown live");

  // ---------------------------------------------------------------- safety numbers
  await staff.getByRole("button", { name: "Safety numbers" }).click();
  await staff.locator("#conv-safety-list code").first().waitFor({ timeout: STEP_TIMEOUT });
  const webNumber = (await staff.locator("#conv-safety-list code").first().textContent()).replace(/\s+/g, "");
  const cliNumber = patient("safety-number", "--handle", "dr.lee").trim().split("\n")[0].replace(/[^0-9]/g, "");
  check(webNumber.length === 60, "the safety number has 60 digits");
  check(cliNumber.endsWith(webNumber) || cliNumber.includes(webNumber), "the browser and the patient's CLI show the same safety number");
  await shot(staff, "staff-safety-numbers");

  // ---------------------------------------------------------------- narrow screen
  await staff.setViewportSize({ width: 390, height: 780 });
  await shot(staff, "staff-conversation-narrow");
  await staff.getByRole("button", { name: "Back to inbox" }).click();
  await shot(staff, "staff-inbox-narrow");
  await staff.setViewportSize({ width: 1180, height: 820 });

  // ---------------------------------------------------------------- admin console
  const adminCtx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1180, height: 900 } });
  const admin = await adminCtx.newPage();
  watch(admin, "admin");
  await admin.goto(`${URL_}/`);
  await admin.getByRole("heading", { name: "Set up this browser" }).waitFor({ timeout: STEP_TIMEOUT });
  await enrolAndLogin(admin, env("ADMIN_INVITE"), ADMIN_PASSWORD, "admin");
  await admin.getByRole("heading", { name: "Admin console" }).waitFor({ timeout: STEP_TIMEOUT });
  await admin.locator("td", { hasText: "alice" }).waitFor({ timeout: STEP_TIMEOUT });
  check((await admin.locator("tbody tr").count()) >= 4, "the console lists the org's people");
  await admin.getByRole("button", { name: "Devices of dr.lee" }).click();
  await admin.locator("#devices-out td", { hasText: "web browser" }).waitFor({ timeout: STEP_TIMEOUT });
  check(true, "the console lists dr.lee's browser device");
  await shot(admin, "admin-people");
  await admin.getByRole("tab", { name: "Care teams" }).click();
  await admin.getByLabel("Team name").fill("Dermatology");
  await admin.getByRole("button", { name: "Create team" }).click();
  await admin.locator("li", { hasText: "Dermatology" }).waitFor({ timeout: STEP_TIMEOUT });
  check(true, "a care team is created from the console");
  await shot(admin, "admin-teams");

  // ---------------------------------------------------------------- retention, then the access log
  await admin.getByRole("tab", { name: "Retention and legal hold" }).click();
  await admin.locator("#retention-mail").waitFor({ timeout: STEP_TIMEOUT });
  check((await admin.locator("#retention-mail").textContent()) === "30 days", "the retention panel shows the default mail retention");
  await admin.getByLabel("Undelivered messages (days").fill("14");
  await admin.getByLabel("Org archive (days").fill("400");
  await admin.getByRole("button", { name: "Save retention" }).click();
  await admin.getByText("Retention saved: undelivered messages 14 days, org archive 400 days.").waitFor({ timeout: STEP_TIMEOUT });
  await admin.getByRole("button", { name: "Run sweep" }).click();
  await admin.getByText("Sweep done at").waitFor({ timeout: STEP_TIMEOUT });
  check(true, "the admin changed the retention and ran a sweep from the console");
  await shot(admin, "admin-retention");
  // A fresh read from the server shows the change.
  await admin.getByRole("tab", { name: "Care teams" }).click();
  await admin.getByRole("tab", { name: "Retention and legal hold" }).click();
  await admin.locator("#retention-mail", { hasText: "14 days" }).waitFor({ timeout: STEP_TIMEOUT });
  check((await admin.locator("#retention-archive").textContent()) === "400 days", "the server reports the new retention");

  await admin.getByRole("tab", { name: "Access log" }).click();
  await admin.getByLabel("Action (e.g.").fill("set_retention");
  await admin.getByRole("button", { name: "Show entries" }).click();
  const changeRow = admin.locator("#log-rows tr", { hasText: "set_retention" });
  await changeRow.first().waitFor({ timeout: STEP_TIMEOUT });
  const changeText = await changeRow.first().textContent();
  check(changeText.includes("admin2") && changeText.includes("allowed"), "the access-log view shows the admin's retention change (actor admin2, allowed)");
  check((await admin.locator("#log-rows tr").count()) === (await changeRow.count()), "the action filter shows only set_retention entries");
  await shot(admin, "admin-access-log");
  // The actor filter: only admin2's entries.
  await admin.getByLabel("Action (e.g.").fill("");
  await admin.getByLabel("Actor").selectOption({ label: "admin2 (admin)" });
  await admin.getByRole("button", { name: "Show entries" }).click();
  await admin.locator("#log-status", { hasText: /match/ }).waitFor({ timeout: STEP_TIMEOUT });
  const actors = await admin.locator("#log-rows tr td:nth-child(3)").allTextContents();
  check(actors.length > 0 && actors.every((a) => a === "admin2"), "the actor filter shows only admin2's entries");
  await admin.getByRole("button", { name: "Verify now" }).click();
  await admin.locator("#log-verified").waitFor({ timeout: STEP_TIMEOUT });
  check((await admin.locator("#log-verified").textContent()).startsWith("The access log verifies"), "the access log verifies from the console");
  for (const format of ["jsonl", "csv"]) {
    await admin.getByLabel("Format").selectOption(format);
    const [download] = await Promise.all([
      admin.waitForEvent("download", { timeout: STEP_TIMEOUT }),
      admin.getByRole("button", { name: "Download export" }).click(),
    ]);
    const text = readFileSync(await download.path(), "utf8");
    const lines = text.trim().split("\n");
    if (format === "jsonl") {
      const rows = lines.map((l) => JSON.parse(l));
      check(rows.length > 0 && rows.some((r) => r.action === "set_retention" && r.outcome === "allowed"), "the JSON-lines export holds the retention change");
    } else {
      check(lines[0] === "seq,at_ms,user,device,role,action,objects,outcome,source,hash" && lines.some((l) => l.includes(",set_retention,")), "the CSV export has the header and the retention change");
    }
  }
  await shot(admin, "admin-access-log-verified");

  // ---------------------------------------------------------------- the org archive
  await admin.getByRole("tab", { name: "Retention and legal hold" }).click();
  await admin.getByLabel("Archive public key").fill(env("ARCHIVE_KEY_A"));
  await admin.getByRole("button", { name: "Enable archive with this key" }).click();
  await admin.getByText("this needs the privacy_officer permission").waitFor({ timeout: STEP_TIMEOUT });
  check(true, "without the privacy_officer permission the console refuses to set the archive key, and says why");
  adminCli("permissions", "--handle", "admin2", "--grant", "privacy_officer");
  await admin.getByRole("button", { name: "Enable archive with this key" }).click();
  await admin.locator("#archive-fingerprint").waitFor({ timeout: STEP_TIMEOUT });
  check((await admin.locator("#archive-fingerprint").textContent()) === fingerprintOf(env("ARCHIVE_KEY_A")),
    "a privacy officer enables the archive; the console shows the key's fingerprint");
  await shot(admin, "admin-archive-key");

  // The staff page authenticated before the archive was on: the server refuses its next send
  // (ARCHIVE_REQUIRED), the page reconnects, learns the key, pins it, seals and sends again.
  await staff.locator("#inbox button", { hasText: "alice" }).click();
  const archivedText = "This answer goes to the clinic's archive too.";
  await staff.getByLabel("Message", { exact: true }).fill(archivedText);
  await staff.keyboard.press("Control+Enter");
  await staff.locator("#messages .msg.out").filter({ hasText: archivedText }).filter({ hasText: "Delivered to the server" })
    .waitFor({ timeout: STEP_TIMEOUT });
  const got = patient("recv", "--wait", "10").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
  check(got.some((m) => m.text === archivedText), "after ARCHIVE_REQUIRED the browser reconnected and sent again; the patient received it");
  // The access log shows the refused send and the repeat.
  await admin.getByRole("tab", { name: "Access log" }).click();
  await admin.getByLabel("Action (e.g.").fill("send");
  await admin.getByLabel("Actor").selectOption({ label: "dr.lee (staff)" });
  await admin.getByRole("button", { name: "Show entries" }).click();
  await admin.locator("#log-rows tr", { hasText: "ARCHIVE_REQUIRED" }).first().waitFor({ timeout: STEP_TIMEOUT });
  check(true, "the access log shows the browser's send refused with ARCHIVE_REQUIRED before the sealed repeat");
  await admin.getByRole("tab", { name: "Retention and legal hold" }).click();
  const exportPath = join(env("ARCHIVE_DIR"), "export.jsonl");
  adminCli("admin", "archive", "export", "--since", "2000-01-01", "--out", exportPath);
  check(!readFileSync(exportPath, "utf8").includes(archivedText), "the archive export is sealed");
  const opened = execFileSync(env("MEDRELAY_SERVER_BIN"), ["archive", "open", "--key", env("ARCHIVE_SECRET_A"), "--in", exportPath], { encoding: "utf8" })
    .trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
  check(opened.some((m) => m.text === archivedText && m.sender_handle === "dr.lee"),
    "the browser sealed its message to the archive key: the officer's key opens it offline, sender checked");

  // The key changes: the staff page is told when it next authenticates, and sends nothing
  // until the staff member accepts the new key.
  await admin.getByLabel("Archive public key").fill(env("ARCHIVE_KEY_B"));
  await admin.getByRole("button", { name: "Enable archive with this key" }).click();
  await admin.locator("#archive-fingerprint", { hasText: fingerprintOf(env("ARCHIVE_KEY_B")) }).waitFor({ timeout: STEP_TIMEOUT });
  check(true, "the archive key is changed from the console");
  await staff.getByRole("button", { name: "Log out" }).click();
  await staff.getByRole("heading", { name: "Log in" }).waitFor({ timeout: STEP_TIMEOUT });
  await staff.getByLabel("Password", { exact: true }).fill(PASSWORD);
  await staff.getByLabel("Authenticator code").fill(recoveryCodes.staff); // each TOTP step works once
  await staff.getByRole("button", { name: "Log in" }).click();
  const changed = staff.locator("#archive-notice");
  await changed.waitFor({ timeout: STEP_TIMEOUT });
  check((await changed.textContent()).includes(fingerprintOf(env("ARCHIVE_KEY_B"))), "the changed archive key is announced with its fingerprint");
  await staff.locator("#inbox button", { hasText: "alice" }).click();
  const blocked = "Sent only after the new key is accepted.";
  await staff.getByLabel("Message", { exact: true }).fill(blocked);
  await staff.keyboard.press("Control+Enter");
  await staff.locator("#messages .msg.out").filter({ hasText: blocked }).filter({ hasText: "Not sent" }).waitFor({ timeout: STEP_TIMEOUT });
  check((await staff.locator("#compose-error").textContent()).includes("archive key changed"), "nothing is sent under a changed archive key, and the page says why");
  await shot(staff, "staff-archive-key-changed");
  await staff.getByRole("button", { name: /accept the new archive key/ }).click();
  await changed.waitFor({ state: "hidden", timeout: STEP_TIMEOUT });
  await staff.getByRole("button", { name: "Send", exact: true }).click();
  await staff.locator("#messages .msg.out").filter({ hasText: blocked }).filter({ hasText: "Delivered to the server" }).waitFor({ timeout: STEP_TIMEOUT });
  const after = patient("recv", "--wait", "10").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
  check(after.some((m) => m.text === blocked), "once the staff member accepts the new key, the message is sent and received");

  // ---------------------------------------------------------------- automatic logoff
  await admin.getByRole("tab", { name: "Sessions and networks" }).click();
  await admin.getByLabel("Idle timeout").fill("3");
  await admin.getByRole("button", { name: "Save timeouts" }).click();
  await admin.getByText("Timeouts saved.").waitFor({ timeout: STEP_TIMEOUT });
  await shot(admin, "admin-sessions");
  log("idle timeout set to 3 s; waiting for the staff session to end");
  await staff.locator("#notice", { hasText: "Logged off to protect patient information" }).waitFor({ timeout: 20000 });
  check(await staff.getByRole("heading", { name: "Log in" }).isVisible(), "after the idle timeout the staff member is back at the login screen");
  check((await staff.locator("#messages .msg").count()) === 0, "no message stays on screen after the logoff");
  await shot(staff, "staff-logged-off");

  // Logging in again at once (password, then a code of the next TOTP step: each code works
  // once) unlocks the same keys, and the history kept encrypted in IndexedDB is back. At
  // once: the server ends the logged-off connection a moment after the logoff, and that late
  // close must not fail this login or end the new session.
  await staff.getByLabel("Password", { exact: true }).fill(PASSWORD);
  await staff.getByLabel("Authenticator code").fill(totp(staffSecret, Date.now() + 30000));
  await staff.getByRole("button", { name: "Log in" }).click();
  await staff.locator("#inbox button", { hasText: blocked }).waitFor({ timeout: STEP_TIMEOUT });
  check(true, "after logging in again the conversation history is back (from the encrypted store)");
  await admin.locator("#notice", { hasText: "Logged off to protect patient information" }).waitFor({ timeout: 20000 });
  check(true, "the admin's console session ended the same way");
  await staff.close();
  await admin.close();

  if (problems.length) throw new Error(`problems seen:\n${problems.join("\n")}`);
  check(true, "no console errors, no requests to other origins");
  await staffCtx.close();
  await adminCtx.close();
} catch (e) {
  // What each page showed when the run failed, for the report.
  for (const [page, name] of watched) {
    try { await shot(page, `failure-${name}`); } catch (_) { /* closed already */ }
  }
  if (problems.length) log("problems seen:\n" + problems.join("\n"));
  throw e;
} finally {
  await browser.close();
}
log("all checks passed; screenshots in", SHOTS);
