// coh judge voting page. Every text from the server goes in through textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // the comparison on screen
let busy = false;

async function api(path, body) {
  const init = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, { credentials: "same-origin", ...init });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = new Error(typeof data.detail === "string" ? data.detail : `HTTP ${r.status}`);
    err.status = r.status;
    throw err;
  }
  return data;
}

function show(view) {
  for (const id of ["login", "vote", "done"]) $(id).hidden = id !== view;
  $("status").hidden = view === "login";
}

function error(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function setProgress(p) {
  $("progress").textContent = `${p.voted} of ${p.total} judged`;
}

function renderPrompt(messages) {
  const box = $("prompt");
  box.replaceChildren();
  for (const m of messages) {
    const turn = document.createElement("div");
    turn.className = "turn";
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = `${m.role}: `;
    turn.append(role, document.createTextNode(m.content));
    box.append(turn);
  }
}

async function next() {
  let data;
  try {
    data = await api("/api/next");
  } catch (e) {
    if (e.status === 401) return startLogin();
    return error(e.message);
  }
  $("who").textContent = data.name;
  setProgress(data.progress);
  current = data.comparison;
  if (!current) return show("done");
  renderPrompt(current.prompt);
  $("left").textContent = current.left;
  $("right").textContent = current.right;
  $("comment").value = "";
  show("vote");
  window.scrollTo(0, 0);
}

async function vote(choice) {
  if (!current || busy) return;
  busy = true;
  for (const b of document.querySelectorAll(".choices button")) b.disabled = true;
  try {
    await api("/api/vote", { comparison: current.id, choice, comment: $("comment").value });
    error("");
    await next();
  } catch (e) {
    if (e.status === 401) startLogin();
    else error(e.message);
  } finally {
    busy = false;
    for (const b of document.querySelectorAll(".choices button")) b.disabled = false;
  }
}

async function startLogin() {
  const config = await api("/api/config").catch(() => ({}));
  $("password-row").hidden = !config.password_required;
  show("login");
  $("name").focus();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api("/api/login", { name: $("name").value, password: $("password").value });
    $("password").value = "";
    error("");
    await next();
  } catch (e) {
    error(e.message);
  }
});

$("switch").addEventListener("click", async () => {
  await api("/api/logout", {}).catch(() => {});
  current = null;
  $("name").value = "";
  startLogin();
});

for (const b of document.querySelectorAll(".choices button")) {
  b.addEventListener("click", () => vote(b.dataset.choice));
}

const KEYS = { "1": "left", "2": "right", t: "tie", n: "neither" };
document.addEventListener("keydown", (event) => {
  if ($("vote").hidden || event.target.closest("textarea, input") || event.ctrlKey || event.metaKey || event.altKey) return;
  const choice = KEYS[event.key];
  if (choice) {
    event.preventDefault();
    vote(choice);
  }
});

next();
