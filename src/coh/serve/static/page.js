// The chat page of `coh serve`. Model and user text is only ever set with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { messages: [], busy: false, controller: null, model: null, phrases: null, epoch: 0,
                key: sessionStorage.getItem("coh-serve-key") || "" };

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function askForKey() {
  $("key-label").hidden = false;
  showError("This server needs an API key: enter it below.");
  $("key").focus();
}

async function loadInfo() {
  const r = await fetch("/info", { headers: headers() });
  if (r.status === 401) return askForKey();
  if (!r.ok) return showError("Could not read /info: HTTP " + r.status);
  const info = await r.json();
  state.model = info.model;
  state.phrases = info.phrases;
  $("model").textContent = info.model;
  $("format").textContent = "prompt format: " + info.prompt_format;
  const opts = $("feedback").options;
  opts[0].textContent = "the positive phrase: " + info.phrases.good;
  opts[1].textContent = "the negative phrase: " + info.phrases.bad;
  $("feedback").value = info.default_feedback;
  showError("");
}

function feedback() {
  const v = $("feedback").value;
  return v === "custom" ? $("phrase").value.trim() : v;
}

function feedbackLabel(value) {
  if (!state.phrases) return value;
  if (value === "good") return state.phrases.good;
  if (value === "bad") return state.phrases.bad;
  if (value === "none") return "no phrase";
  return value;
}

function addMessage(role, text, note) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Model" + (note ? " · " + note : "");
  const body = document.createElement("div");
  body.className = "body";
  body.textContent = text;
  div.append(who, body);
  $("log").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function setBusy(busy) {
  state.busy = busy;
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("regenerate").disabled = busy || !state.messages.some((m) => m.role === "assistant");
}

// Read server-sent events from a fetch response; call onData with each parsed `data:` object.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data !== "[DONE]") onData(JSON.parse(data));
      }
    }
  }
}

async function reply() {
  const fb = feedback();
  if (!fb) return showError("Write the phrase to condition the reply on, or pick another option.");
  showError("");
  setBusy(true);
  const div = addMessage("assistant", "", feedbackLabel(fb));
  div.classList.add("pending");
  const body = div.querySelector(".body");
  let text = "";
  const epoch = state.epoch;  // a reset during this reply makes it stale
  state.controller = new AbortController();
  const payload = { model: state.model, messages: state.messages, stream: true, feedback: fb,
                    temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value) };
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(),
                                                    body: JSON.stringify(payload), signal: state.controller.signal });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      div.remove();
      if (r.status === 401) askForKey();
      else showError((err.error && err.error.message) || "HTTP " + r.status);
      return;
    }
    await readEvents(r, (obj) => {
      if (obj.error) throw new Error(obj.error.message);
      const delta = obj.choices && obj.choices[0] && obj.choices[0].delta;
      if (delta && delta.content) {
        text += delta.content;
        body.textContent = text;
      }
    });
    if (epoch === state.epoch) state.messages.push({ role: "assistant", content: text });
  } catch (e) {
    if (epoch !== state.epoch) return;
    if (e.name === "AbortError") state.messages.push({ role: "assistant", content: text });
    else { div.remove(); showError(String(e.message || e)); }
  } finally {
    div.classList.remove("pending");
    state.controller = null;
    setBusy(false);
  }
}

async function send(event) {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.busy) return;
  $("input").value = "";
  state.messages.push({ role: "user", content: text });
  addMessage("user", text);
  await reply();
}

function regenerate() {
  if (state.busy || !state.messages.length || state.messages[state.messages.length - 1].role !== "assistant") return;
  state.messages.pop();
  const last = $("log").lastElementChild;
  if (last && last.classList.contains("assistant")) last.remove();
  reply();
}

function reset() {
  state.epoch += 1;
  if (state.controller) state.controller.abort();
  state.messages = [];
  $("log").replaceChildren();
  showError("");
  setBusy(false);
}

document.addEventListener("DOMContentLoaded", () => {
  $("composer").addEventListener("submit", send);
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("regenerate").addEventListener("click", regenerate);
  $("reset").addEventListener("click", reset);
  $("feedback").addEventListener("change", () => { $("phrase").hidden = $("feedback").value !== "custom"; });
  $("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });
  $("key").addEventListener("change", () => {
    state.key = $("key").value;
    sessionStorage.setItem("coh-serve-key", state.key);
    loadInfo();
  });
  loadInfo();
});
