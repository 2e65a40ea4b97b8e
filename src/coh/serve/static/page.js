// The chat page of `coh serve`. Model and user text is only ever set with textContent, never as HTML.
//
// A conversation is held by a lane: its log, its phrase control and its message history. The chat
// is one lane; the compare view adds a second, so that one message gets two replies, streamed at
// once under two phrases, each lane continuing its own history.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { busy: false, compare: false, model: null, phrases: null, epoch: 0, lanes: [],
                key: sessionStorage.getItem("coh-serve-key") || "" };

function lane(name, suffix) {
  return { name, section: $("lane-" + name.toLowerCase()), title: $("title-" + name.toLowerCase()),
           log: $("log" + suffix), select: $("feedback" + suffix), phrase: $("phrase" + suffix),
           messages: [], controller: null };
}

function activeLanes() {
  return state.compare ? state.lanes : state.lanes.slice(0, 1);
}

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
  for (const l of state.lanes) {
    l.select.options[0].textContent = "the positive phrase: " + info.phrases.good;
    l.select.options[1].textContent = "the negative phrase: " + info.phrases.bad;
  }
  const [a, b] = state.lanes;
  a.select.value = info.default_feedback;
  b.select.value = info.default_feedback === "bad" ? "good" : "bad";  // the contrast, whatever the default
  updateTitles();
  showError("");
}

function feedback(l) {
  return l.select.value === "custom" ? l.phrase.value.trim() : l.select.value;
}

function feedbackLabel(value) {
  if (!state.phrases) return value;
  if (value === "good") return state.phrases.good;
  if (value === "bad") return state.phrases.bad;
  if (value === "none") return "no phrase";
  return value;
}

function updateTitles() {
  for (const l of state.lanes) {
    l.phrase.hidden = l.select.value !== "custom";
    l.title.textContent = l.name + " · " + (feedback(l) ? feedbackLabel(feedback(l)) : "(write a phrase)");
  }
}

function addMessage(l, role, text, note) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Model" + (note ? " · " + note : "");
  const body = document.createElement("div");
  body.className = "body";
  body.textContent = text;
  div.append(who, body);
  l.log.append(div);
  div.scrollIntoView({ block: "nearest" });
  return div;
}

function setBusy(busy) {
  state.busy = busy;
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("compare").disabled = busy;
  $("regenerate").disabled = busy || !activeLanes().every((l) => lastIsReply(l));
}

function lastIsReply(l) {
  return l.messages.length > 0 && l.messages[l.messages.length - 1].role === "assistant";
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

// Stream one reply into lane `l` under phrase `fb`. Returns an error message, or "" when the reply
// came (or was stopped: its text so far joins the history).
async function reply(l, fb, settings) {
  const div = addMessage(l, "assistant", "", feedbackLabel(fb));
  div.classList.add("pending");
  l.log.setAttribute("aria-busy", "true");  // announce the reply once, when it is complete
  const body = div.querySelector(".body");
  let text = "";
  const epoch = state.epoch;  // a reset during this reply makes it stale
  l.controller = new AbortController();
  const payload = { model: state.model, messages: l.messages, stream: true, feedback: fb, ...settings };
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(),
                                                    body: JSON.stringify(payload), signal: l.controller.signal });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      div.remove();
      if (r.status === 401) return "401";
      return (err.error && err.error.message) || "HTTP " + r.status;
    }
    await readEvents(r, (obj) => {
      if (obj.error) throw new Error(obj.error.message);
      const delta = obj.choices && obj.choices[0] && obj.choices[0].delta;
      if (delta && delta.content) {
        text += delta.content;
        body.textContent = text;
      }
    });
    if (epoch === state.epoch) l.messages.push({ role: "assistant", content: text });
    return "";
  } catch (e) {
    if (epoch !== state.epoch) return "";
    if (e.name === "AbortError") { l.messages.push({ role: "assistant", content: text }); return ""; }
    div.remove();
    return String(e.message || e);
  } finally {
    div.classList.remove("pending");
    l.log.removeAttribute("aria-busy");
    l.controller = null;
  }
}

// One reply in every active lane, requested at once; errors are shown together, named by lane.
async function replyAll() {
  const lanes = activeLanes();
  const phrases = lanes.map(feedback);
  if (phrases.some((fb) => !fb)) {
    showError("Write the phrase to condition the reply on, or pick another option.");
    return false;
  }
  showError("");
  setBusy(true);
  const settings = { temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value) };
  const errors = await Promise.all(lanes.map((l, i) => reply(l, phrases[i], settings)));
  setBusy(false);
  if (errors.includes("401")) return askForKey();
  showError(errors.map((e, i) => (e && lanes.length > 1 ? lanes[i].name + ": " + e : e)).filter(Boolean).join("\n"));
  return true;
}

async function send(event) {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.busy) return;
  if (activeLanes().some((l) => !feedback(l))) {
    return showError("Write the phrase to condition the reply on, or pick another option.");
  }
  $("input").value = "";
  for (const l of activeLanes()) {
    l.messages.push({ role: "user", content: text });
    addMessage(l, "user", text);
  }
  await replyAll();
}

function regenerate() {
  const lanes = activeLanes();
  if (state.busy || !lanes.every(lastIsReply) || lanes.some((l) => !feedback(l))) return;
  for (const l of lanes) {
    l.messages.pop();
    const last = l.log.lastElementChild;
    if (last && last.classList.contains("assistant")) last.remove();
  }
  replyAll();
}

function stop() {
  for (const l of state.lanes) if (l.controller) l.controller.abort();
}

function reset() {
  state.epoch += 1;
  stop();
  for (const l of state.lanes) {
    l.messages = [];
    l.log.replaceChildren();
  }
  showError("");
  setBusy(false);
}

// Into the compare view, lane B starts from lane A's conversation; out of it, lane A goes on alone.
function setCompare(on) {
  if (state.busy) return;
  const [a, b] = state.lanes;
  state.compare = on;
  b.messages = on ? a.messages.map((m) => ({ ...m })) : [];
  b.log.replaceChildren(...(on ? [...a.log.children].map((n) => n.cloneNode(true)) : []));
  document.body.classList.toggle("compare", on);
  b.section.hidden = !on;
  a.title.hidden = !on;
  $("feedback-b-label").hidden = !on;
  updateTitles();
  setBusy(false);
}

document.addEventListener("DOMContentLoaded", () => {
  state.lanes = [lane("A", ""), lane("B", "-b")];
  $("composer").addEventListener("submit", send);
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.busy) stop(); });
  $("stop").addEventListener("click", stop);
  $("regenerate").addEventListener("click", regenerate);
  $("reset").addEventListener("click", reset);
  $("compare").addEventListener("change", () => setCompare($("compare").checked));
  for (const l of state.lanes) {
    l.select.addEventListener("change", updateTitles);
    l.phrase.addEventListener("input", updateTitles);
  }
  $("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });
  $("key").addEventListener("change", () => {
    state.key = $("key").value;
    sessionStorage.setItem("coh-serve-key", state.key);
    loadInfo();
  });
  updateTitles();
  loadInfo();
});
