// The page: reviews in, one POST /predict per chunk of at most the server's max inputs, labels out.
// With "Why?" ticked it asks POST /explain instead (chunks of the server's max explain inputs) and colours each
// character by its contribution toward the predicted label: green supports it, red speaks against it.
// A server started with an API key answers /info with 401: the page then asks for the key, keeps it
// in sessionStorage (this tab only) and sends it with every request.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "zh-sentiment-api-key";
let maxInputs = 32;
let maxExplainInputs = 8;
const FOR = [26, 138, 74]; // the legend's colours (page.css)
const AGAINST = [200, 40, 40];

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
    maxExplainInputs = info.max_explain_inputs || maxExplainInputs;
    const accuracy = info.validation && info.validation.accuracy;
    $("model").textContent =
      `Model: ${info.kind} (${info.label_names.join(" / ")})` +
      (typeof accuracy === "number" ? `, validation accuracy ${accuracy.toFixed(3)}` : "") +
      (info.max_length ? `; reads the first ${info.max_length} tokens of a review.` : ".");
  } catch (err) {
    $("model").textContent = "The server did not describe its model (/info): " + err;
  }
}

// The review with one span per attributed character (or word piece), its background by its score's sign,
// its strength relative to the review's strongest.
function colouredText(text, attributions) {
  const paragraph = element("p", "text");
  const strongest = Math.max(...attributions.map((a) => Math.abs(a.score)), 1e-12);
  let at = 0;
  for (const a of attributions) {
    if (a.start > at) paragraph.append(text.slice(at, a.start));
    const piece = element("span", "char", text.slice(a.start, a.end));
    piece.dataset.score = a.score;
    const [r, g, b] = a.score >= 0 ? FOR : AGAINST;
    const alpha = a.score === 0 ? 0 : 0.12 + 0.78 * (Math.abs(a.score) / strongest);
    piece.style.backgroundColor = `rgba(${r}, ${g}, ${b}, ${alpha.toFixed(3)})`;
    piece.title = `${a.score >= 0 ? "+" : ""}${a.score.toFixed(3)}`;
    paragraph.append(piece);
    at = Math.max(at, a.end);
  }
  if (at < text.length) paragraph.append(text.slice(at));
  return paragraph;
}

function showExplained(text, answer) {
  const item = element("li", "result");
  item.append(colouredText(text, answer.attributions));
  const verdict = element("p", "label", `${answer.label} ${(100 * answer.score).toFixed(1)}%`);
  verdict.dataset.label = answer.label;
  item.append(verdict);
  for (const warning of answer.warnings || []) {
    const note = element("p", "warning", "⚠ " + warning.message);
    note.dataset.code = warning.code;
    item.append(note);
  }
  $("results").append(item);
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
  const explain = $("explain").checked;
  const size = explain ? maxExplainInputs : maxInputs;
  $("legend").hidden = !explain;
  try {
    for (let start = 0; start < reviews.length; start += size) {
      const chunk = reviews.slice(start, start + size);
      const response = await fetch(explain ? "/explain" : "/predict", {
        method: "POST",
        headers: withKey({ "Content-Type": "application/json" }),
        body: JSON.stringify({ inputs: chunk }),
      });
      if (response.status === 401) askForKey();
      const answer = await response.json();
      if (!response.ok) throw new Error(answer.error || response.statusText);
      chunk.forEach((text, i) => (explain ? showExplained : showResult)(text, answer[i]));
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
