"""The page `nmt serve` shows at `/`: plain HTML and JavaScript, no build step. It calls POST /translate
with attention and draws the chosen line's attention as a table (source pieces across, target pieces
down), the picture `nmt translate --attention-plots` writes, but live."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nmt</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; color: #222; }
  textarea { width: 100%; height: 6em; font: inherit; box-sizing: border-box; }
  .controls { margin: .5em 0 1em; display: flex; gap: 1.5em; align-items: center; flex-wrap: wrap; }
  input[type=number] { width: 4em; }
  #lines li { cursor: pointer; padding: .2em .4em; border-radius: 4px; }
  #lines li.chosen { background: #e8f0fe; }
  #lines .nbest { color: #666; font-size: 90%; margin: .2em 0 0 1em; }
  #error { color: #b00020; }
  #heatmap { border-collapse: collapse; margin-top: 1em; font-size: 13px; }
  #heatmap th { font-weight: normal; padding: 2px 4px; white-space: nowrap; }
  #heatmap thead th { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; }
  #heatmap td { width: 1.6em; height: 1.6em; border: 1px solid #fff; }
</style>
</head>
<body>
<h1>nmt <small id="languages"></small></h1>
<textarea id="source" placeholder="Type a sentence; each line is translated on its own"></textarea>
<div class="controls">
  <button id="translate">Translate</button>
  <label>beam size <input id="beam" type="number" min="1" max="20" value="5"></label>
  <label>n-best <input id="nbest" type="number" min="1" max="20" value="1"></label>
  <span id="status"></span>
</div>
<div id="error"></div>
<ol id="lines"></ol>
<table id="heatmap"></table>
<script>
const $ = (id) => document.getElementById(id);
let lines = [];

fetch("info").then((r) => r.json()).then((info) => {
  $("languages").textContent = `${info.source_language} → ${info.target_language}`;
  $("beam").value = info.decode.beam_size;
});

const text = (tag, content) => Object.assign(document.createElement(tag), {textContent: content});

function drawHeatmap(index) {
  const table = $("heatmap");
  table.replaceChildren();
  document.querySelectorAll("#lines li").forEach((li, i) => li.classList.toggle("chosen", i === index));
  const attention = lines[index] && lines[index].attention;
  if (!attention || !attention.weights.length) return;
  const head = table.createTHead().insertRow();
  ["", ...attention.source].forEach((piece) => head.appendChild(text("th", piece)));  // a corner, then the source
  const body = table.createTBody();
  attention.weights.forEach((row, t) => {
    const tr = body.insertRow();
    tr.appendChild(text("th", attention.target[t]));
    row.forEach((weight, s) => {
      const cell = tr.insertCell();
      cell.style.background = `rgba(26, 82, 180, ${weight.toFixed(3)})`;
      cell.title = `${attention.target[t]} ← ${attention.source[s]}: ${weight.toFixed(3)}`;
    });
  });
}

async function translate() {
  $("error").textContent = "";
  $("status").textContent = "translating…";
  try {
    const response = await fetch("translate", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({text: $("source").value, beam_size: Number($("beam").value),
                            nbest: Number($("nbest").value), attention: true})});
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    lines = answer.translations[0].lines;
    const list = $("lines");
    list.replaceChildren();
    lines.forEach((line, i) => {
      const li = list.appendChild(text("li", line.text));
      (line.nbest || []).forEach((h) => li.appendChild(Object.assign(
        text("div", `${h.score === null ? "–" : h.score.toFixed(3)}  ${h.text}`), {className: "nbest"})));
      li.addEventListener("click", () => drawHeatmap(i));
    });
    drawHeatmap(0);
    $("status").textContent = `${answer.milliseconds} ms`;
  } catch (error) {
    $("status").textContent = "";
    $("error").textContent = error.message;
  }
}

$("translate").addEventListener("click", translate);
$("source").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) translate();
});
</script>
</body>
</html>
"""
