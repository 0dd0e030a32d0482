// The page: reviews in, one POST /predict per chunk of at most the server's max inputs, labels out.
// A server started with an API key answers /info with 401: the page then asks for the key, keeps it
// in sessionStorage (this tab only) and sends it with every request.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "zh-sentiment-api-key";
let maxInputs = 32;

function withKey(headers = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

function askForKey() {
  $("model").textContent = sessionStorage.getItem(KEY)
    ? "The server refused that key: type it again."
    : "The server asks for its API key.";
  $("key-form").hidden = false;
  $("key").focus();
}

function useKey(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value);
  $("key").value = "";
  $("key-form").hidden = true;
  describeModel();
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function describeModel() {
  try {
    const response = await fetch("/info", { headers: withKey() });
    if (response.status === 401) return askForKey();
    const info = await response.json();
    maxInputs = info.max_client_batch_size;
    const accuracy = info.validation && info.validation.accuracy;
    $("model").textContent =
      `Model: ${info.kind} (${info.label_names.join(" / ")})` +
      (typeof accuracy === "number" ? `, validation accuracy ${accuracy.toFixed(3)}` : "") +
      (info.max_length ? `; reads the first ${info.max_length} tokens of a review.` : ".");
  } catch (err) {
    $("model").textContent = "The server did not describe its model (/info): " + err;
  }
}

function showResult(text, predictions) {
  const item = element("li", "result");
  item.append(element("p", "text", text || "(empty)"));
  const top = predictions[0];
  const verdict = element("p", "label", top.label);
  verdict.dataset.label = top.label;
  item.append(verdict);
  const bars = element("div", "bars");
  for (const p of predictions) {
    const bar = element("div", p === top ? "bar top" : "bar");
    const fill = element("span");
    fill.style.width = `${(100 * p.score).toFixed(1)}%`;
    bar.append(fill);
    bars.append(element("span", "", p.label), bar, element("span", "score", `${(100 * p.score).toFixed(1)}%`));
  }
  item.append(bars);
  for (const warning of top.warnings || []) {
    const note = element("p", "warning", "⚠ " + warning.message);
    note.dataset.code = warning.code;
    item.append(note);
  }
  $("results").append(item);
}

async function classify(event) {
  event.preventDefault();
  const reviews = $("reviews").value.split("\n").map((line) => line.trim()).filter((line) => line);
  $("error").hidden = true;
  $("results").replaceChildren();
  if (!reviews.length) {
    $("error").textContent = "Type or paste a review first (one per line).";
    $("error").hidden = false;
    return;
  }
  $("classify").disabled = true;
  try {
    for (let start = 0; start < reviews.length; start += maxInputs) {
      const chunk = reviews.slice(start, start + maxInputs);
      const response = await fetch("/predict", {
        method: "POST",
        headers: withKey({ "Content-Type": "application/json" }),
        body: JSON.stringify({ inputs: chunk }),
      });
      if (response.status === 401) askForKey();
      const answer = await response.json();
      if (!response.ok) throw new Error(answer.error || response.statusText);
      chunk.forEach((text, i) => showResult(text, answer[i]));
    }
  } catch (err) {
    $("error").textContent = "Could not classify: " + err.message;
    $("error").hidden = false;
  } finally {
    $("classify").disabled = false;
  }
}

$("form").addEventListener("submit", classify);
$("key-form").addEventListener("submit", useKey);
$("reviews").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("form").requestSubmit();
});
describeModel();
