// The chat page: a plain client of POST /v1/chat/completions with `stream: true` (server-sent events),
// as any other client would use it. No framework, no build step.
"use strict";

const API = "/v1/chat/completions";
const KEY_STORAGE = "nextgpt.apiKey";
const AUDIO_FORMATS = { // input_audio formats the API accepts, by MIME type and by file extension
  "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/vnd.wave": "wav",
  "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/flac": "flac", "audio/x-flac": "flac", "audio/ogg": "ogg",
  wav: "wav", mp3: "mp3", flac: "flac", ogg: "ogg",
};
const EXTENSION_TYPES = {
  png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", webp: "image/webp",
  mp4: "video/mp4", webm: "video/webm", wav: "audio/wav", mp3: "audio/mpeg", flac: "audio/flac", ogg: "audio/ogg",
};
const FILE_EXTENSIONS = {
  "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "video/mp4": "mp4", "video/webm": "webm",
  "audio/wav": "wav", "audio/mpeg": "mp3", "audio/flac": "flac", "audio/ogg": "ogg",
};

const $ = (id) => document.getElementById(id);
const ui = {
  main: $("main"), log: $("log"), hint: $("empty-hint"), form: $("composer"), message: $("message"),
  attach: $("attach"), attachments: $("attachments"), send: $("send"), stop: $("stop"),
  newChat: $("new-chat"), settings: $("settings"), apiKey: $("api-key"),
  alert: $("alert"), alertText: $("alert-text"), alertClose: $("alert-close"),
};

const state = {
  history: [], // the API messages of every completed turn, generated media included
  attachments: [], // {name, kind: image|video|audio, mime, dataUrl, base64}
  controller: null, // AbortController of the request in flight
  mediaCount: 0,
};

// ---------------------------------------------------------------------------------------------- alerts

function showAlert(message) {
  ui.alertText.textContent = message;
  ui.alert.hidden = false;
}

function clearAlert() {
  ui.alert.hidden = true;
  ui.alertText.textContent = "";
}

// --------------------------------------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (value === true) node.setAttribute(name, "");
    else if (value !== false && value != null) node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function base64ToBlobUrl(base64, mime) {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return URL.createObjectURL(new Blob([bytes], { type: mime }));
}

function splitDataUrl(url) {
  const comma = url.indexOf(",");
  const mime = url.slice(5, comma).split(";")[0] || "application/octet-stream";
  return { mime, base64: url.slice(comma + 1) };
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function scrollToEnd() {
  window.scrollTo({ top: document.body.scrollHeight });
}

// ------------------------------------------------------------------------------------------ attachments

function fileType(file) {
  if (file.type) return file.type.toLowerCase();
  const ext = file.name.split(".").pop().toLowerCase();
  return EXTENSION_TYPES[ext] || "";
}

async function addFiles(files) {
  for (const file of files) {
    const mime = fileType(file);
    const kind = mime.split("/")[0];
    if (!["image", "video", "audio"].includes(kind)) {
      showAlert(`${file.name} is not an image, audio or video file (its type is ${mime || "unknown"}).`);
      continue;
    }
    let dataUrl;
    try {
      dataUrl = await readDataUrl(file);
    } catch (err) {
      showAlert(`Could not read ${file.name}: ${err.message}`);
      continue;
    }
    // The browser may label a file application/octet-stream; the server reads the MIME type we send.
    const base64 = dataUrl.slice(dataUrl.indexOf(",") + 1);
    state.attachments.push({ name: file.name, kind, mime, base64, dataUrl: `data:${mime};base64,${base64}` });
  }
  renderAttachments();
}

function renderAttachments() {
  ui.attachments.replaceChildren(...state.attachments.map((item, i) => {
    const remove = el("button", { type: "button", "aria-label": `Remove ${item.name}`, text: "×" });
    remove.addEventListener("click", () => {
      state.attachments.splice(i, 1);
      renderAttachments();
      ui.message.focus();
    });
    return el("li", {}, el("span", { text: `${item.kind}: ${item.name}` }), remove);
  }));
}

function attachmentPart(item) {
  if (item.kind === "audio") {
    const ext = item.name.split(".").pop().toLowerCase();
    const format = AUDIO_FORMATS[item.mime] || AUDIO_FORMATS[ext] || item.mime.split("/")[1];
    return { type: "input_audio", input_audio: { data: item.base64, format } };
  }
  const type = item.kind === "image" ? "image_url" : "video_url";
  return { type, [type]: { url: item.dataUrl } };
}

// ------------------------------------------------------------------------------------------- rendering

function addTurn(role) {
  ui.hint.hidden = true;
  const label = role === "user" ? "You" : "Assistant";
  const body = el("div", { class: "body" });
  const article = el("article", { class: `turn ${role}`, "aria-label": label },
    el("h2", { class: "who", text: label }), body);
  ui.log.append(article);
  scrollToEnd();
  return { article, body };
}

function showMedia(container, kind, mime, blobUrl, caption) {
  state.mediaCount += 1;
  const ext = FILE_EXTENSIONS[mime] || mime.split("/")[1] || "bin";
  const name = `nextgpt-${kind}-${state.mediaCount}.${ext}`;
  let player;
  if (kind === "image") player = el("img", { src: blobUrl, alt: caption });
  else if (kind === "video") player = el("video", { src: blobUrl, controls: true, "aria-label": caption });
  else player = el("audio", { src: blobUrl, controls: true, "aria-label": caption });
  const link = el("a", { href: blobUrl, download: name, text: `Download ${kind} (${name})` });
  container.append(el("figure", { class: `media ${kind}` }, player, el("figcaption", {}, link)));
  scrollToEnd();
}

function renderUserTurn(text, attachments) {
  const { body } = addTurn("user");
  if (text) body.append(el("p", { class: "text", text }));
  for (const item of attachments) {
    const url = base64ToBlobUrl(item.base64, item.mime);
    if (item.kind === "image") body.append(el("img", { src: url, alt: `attached ${item.name}`, class: "thumb" }));
    else body.append(el("p", { class: "file", text: `attached ${item.kind}: ${item.name}` }));
  }
  return body.parentElement;
}

// ---------------------------------------------------------------------------------------------- request

function numberSetting(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

function decodeOptions(modality, names) {
  const options = {};
  for (const name of names) {
    const value = numberSetting(`${modality}-${name}`);
    if (value !== undefined) options[name] = value;
  }
  return options;
}

function requestBody(messages) {
  const modalities = ["text"];
  for (const m of ["image", "video", "audio"]) if ($(`want-${m}`).checked) modalities.push(m);
  const body = { messages, modalities, stream: true };
  const seed = numberSetting("seed");
  if (seed !== undefined) body.seed = seed;
  const maxTokens = numberSetting("max-tokens");
  if (maxTokens !== undefined) body.max_tokens = maxTokens;
  const nextgpt = {
    image: decodeOptions("image", ["steps", "width", "height"]),
    video: decodeOptions("video", ["steps", "width", "height", "num_frames", "fps"]),
    audio: decodeOptions("audio", ["steps", "audio_seconds"]),
  };
  for (const key of Object.keys(nextgpt)) if (Object.keys(nextgpt[key]).length === 0) delete nextgpt[key];
  if (Object.keys(nextgpt).length) body.nextgpt = nextgpt;
  return body;
}

/** The message of a failed response: the server's `error.message`, else the status line. */
async function errorMessage(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON: a proxy's page, say */ }
  if (response.status === 401) {
    ui.settings.open = true;
    return `${message}. Enter the API key in Settings and send again.`;
  }
  if (response.status === 429 || response.status === 503) {
    const retry = response.headers.get("retry-after");
    return `${message}${retry ? ` (retry in ${retry} s)` : ""}`;
  }
  return message;
}

/** Yields each SSE event's data (a string) as it arrives. */
async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
      if (data.length) yield data.join("\n");
    }
  }
}

/** Streams one answer into `turn`; returns the assistant message for the history, or null if it failed. */
async function readAnswer(response, turn) {
  const text = el("p", { class: "text" });
  const media = el("div", { class: "media-list" });
  const notes = el("ul", { class: "notes" });
  turn.body.append(text, media, notes);
  const parts = []; // generated image / video / further audio parts, as the API sent them
  let audio = null; // the first audio: message.audio in the history
  let content = "";
  const shownErrors = new Set();
  const note = (kind, message) => notes.append(el("li", { class: kind, text: message }));
  const mediaError = (error) => {
    const key = `${error.modality}: ${error.message}`;
    if (!shownErrors.has(key)) {
      shownErrors.add(key);
      note("error", `${error.modality} failed: ${error.message}`);
    }
  };

  for await (const data of sseData(response)) {
    if (data === "[DONE]") break;
    const chunk = JSON.parse(data);
    if (chunk.error) { // the stream failed after it started
      note("error", chunk.error.message);
      showAlert(chunk.error.message);
      return null;
    }
    const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
    if (typeof delta.content === "string") {
      content += delta.content;
      text.textContent = content;
    } else if (Array.isArray(delta.content)) {
      for (const part of delta.content) {
        const kind = { image_url: "image", video_url: "video", audio_url: "audio" }[part.type];
        if (!kind) continue;
        const { mime, base64 } = splitDataUrl(part[part.type].url);
        showMedia(media, kind, mime, base64ToBlobUrl(base64, mime), `generated ${kind}`);
        parts.push(part);
      }
    }
    if (delta.audio && delta.audio.data) {
      const mime = `audio/${delta.audio.format || "wav"}`;
      showMedia(media, "audio", mime, base64ToBlobUrl(delta.audio.data, mime), "generated audio");
      if (audio === null) audio = { id: delta.audio.id, data: delta.audio.data, format: delta.audio.format };
      else parts.push({ type: "audio_url", audio_url: { url: `data:${mime};base64,${delta.audio.data}` } });
    }
    const info = chunk.nextgpt;
    if (info && info.error) mediaError(info.error);
    if (info && info.timings) { // the last chunk
      for (const error of info.errors || []) mediaError(error);
      for (const warning of info.warnings || []) note("warning", warning);
      const timings = Object.entries(info.timings).map(([stage, s]) => `${stage} ${s.toFixed(2)} s`);
      const usage = chunk.usage ? ` · ${chunk.usage.completion_tokens} tokens` : "";
      note("timings", `${timings.join(" · ")}${usage}`);
    }
    scrollToEnd();
  }
  const message = { role: "assistant" };
  message.content = parts.length ? [{ type: "text", text: content }, ...parts] : content;
  if (audio) message.audio = audio;
  return message;
}

async function send() {
  if (state.controller) return;
  const text = ui.message.value.trim();
  const attachments = [...state.attachments];
  if (!text && !attachments.length) {
    ui.message.focus();
    return;
  }
  clearAlert();
  const content = attachments.length
    ? [...(text ? [{ type: "text", text }] : []), ...attachments.map(attachmentPart)]
    : text;
  const userMessage = { role: "user", content };
  const userTurn = renderUserTurn(text, attachments);
  const answer = addTurn("assistant");
  answer.article.setAttribute("aria-busy", "true");

  const headers = { "content-type": "application/json" };
  const key = ui.apiKey.value.trim();
  if (key) headers.authorization = `Bearer ${key}`;
  const controller = new AbortController();
  setBusy(controller);
  let assistantMessage = null;
  let focus = ui.message;
  let accepted = false; // the server answered 200: the turn left the composer
  try {
    const response = await fetch(API, {
      method: "POST",
      headers,
      body: JSON.stringify(requestBody([...state.history, userMessage])),
      signal: controller.signal,
    });
    if (!response.ok) {
      showAlert(await errorMessage(response));
      focus = response.status === 401 ? ui.apiKey : ui.message;
      dropTurn(userTurn, answer.article); // the composer still holds the message: fix and send again
      return;
    }
    accepted = true;
    ui.message.value = ""; // the turn moves from the composer to the log
    state.attachments = [];
    renderAttachments();
    assistantMessage = await readAnswer(response, answer);
  } catch (err) {
    const stopped = err.name === "AbortError";
    if (!accepted) { // nothing arrived: the composer still holds the message
      dropTurn(userTurn, answer.article);
    } else {
      answer.body.append(el("p", { class: "notes", text: stopped ? "Stopped." : "The answer broke off." }));
    }
    if (!stopped) {
      showAlert(accepted
        ? `The connection broke during the answer (${err.message}). Send again.`
        : `Could not reach the server (${err.message}). Check that it runs, then send again.`);
    }
  } finally {
    answer.article.removeAttribute("aria-busy");
    setBusy(null);
    focus.focus();
  }
  if (assistantMessage) {
    state.history.push(userMessage, assistantMessage);
    if (key) localStorage.setItem(KEY_STORAGE, key);
  }
}

function dropTurn(...articles) {
  for (const article of articles) article.remove();
  ui.hint.hidden = ui.log.querySelector("article") !== null;
}

function setBusy(controller) {
  state.controller = controller;
  ui.send.disabled = controller !== null;
  ui.stop.hidden = controller === null;
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.history = [];
  state.attachments = [];
  renderAttachments();
  clearAlert();
  ui.log.replaceChildren(ui.hint);
  ui.hint.hidden = false;
  ui.message.value = "";
  ui.message.focus();
}

// ---------------------------------------------------------------------------------------------- events

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
ui.attach.addEventListener("change", async () => {
  await addFiles([...ui.attach.files]);
  ui.attach.value = ""; // the same file may be chosen again
});
ui.stop.addEventListener("click", () => state.controller && state.controller.abort());
ui.newChat.addEventListener("click", newChat);
ui.alertClose.addEventListener("click", clearAlert);
for (const name of ["dragenter", "dragover"]) {
  ui.main.addEventListener(name, (event) => {
    event.preventDefault();
    ui.main.classList.add("dropping");
  });
}
ui.main.addEventListener("dragleave", (event) => {
  if (event.target === ui.main) ui.main.classList.remove("dropping");
});
ui.main.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.main.classList.remove("dropping");
  addFiles([...event.dataTransfer.files]);
});
ui.apiKey.value = localStorage.getItem(KEY_STORAGE) || "";
ui.message.focus();
