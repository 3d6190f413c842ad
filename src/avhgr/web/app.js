// The page of `avhgr serve`: everything here is served by the process itself.
"use strict";
const $ = (id) => document.getElementById(id);
const pct = (p) => `${Math.round(100 * p)} %`;

fetch("/api/model").then((r) => r.json()).then((m) => {
  $("model").textContent = `Model: ${m.description} (${m.name}); classes ${m.classes.join(", ")}; inputs ${m.inputs.join(" and ")}.`;
  $("card").textContent = m.card || "";
}).catch(() => { $("model").textContent = "the model's description could not be read"; });

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function send(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  form.append("hop", "0.5");
  form.append("plot", "true");
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/predict");
  xhr.responseType = "json";
  $("progress").hidden = false;
  $("progress").value = 0;
  status(`uploading ${name}…`);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) $("progress").value = (100 * e.loaded) / e.total;
  };
  xhr.upload.onload = () => {
    $("progress").removeAttribute("value");
    status(`${name}: finding faces, listening, and asking the model…`);
  };
  xhr.onload = () => {
    $("progress").hidden = true;
    const r = xhr.response || {};
    if (xhr.status !== 200) { status(`${name}: ${r.error || xhr.statusText}`, true); return; }
    status("");
    show(r);
  };
  xhr.onerror = () => { $("progress").hidden = true; status("the server could not be reached", true); };
  xhr.send(form);
}

function show(r) {
  $("result").hidden = false;
  $("emotion").textContent = r.emotion || "no emotion";
  $("confidence").textContent = r.emotion ? pct(r.probabilities[r.emotion]) : "";
  $("reason").textContent = r.reason ? `No emotion: ${r.reason}.` : "";
  const ev = [];
  if (r.face_rate !== null) ev.push(`a face in ${pct(r.face_rate)} of the windows`);
  if (r.speech_rate !== null) ev.push(`speech in ${pct(r.speech_rate)}`);
  if (r.experts) ev.push(`answered by the face expert in ${r.experts.face} and the voice expert in ${r.experts.voice} windows`);
  $("evidence").textContent = `${r.windows} windows: ${ev.join(", ")}.`;
  const bars = $("bars");
  bars.replaceChildren();
  Object.entries(r.probabilities || {}).sort((a, b) => b[1] - a[1]).forEach(([c, p]) => {
    const row = document.createElement("div");
    row.className = "bar";
    row.innerHTML = `<span></span><div style="width:${Math.max(1, 300 * p)}px"></div><em>${pct(p)}</em>`;
    row.firstChild.textContent = c;
    bars.append(row);
  });
  $("timeline").src = r.timeline_png || "";
  const head = $("windows").tHead, body = $("windows").tBodies[0];
  head.replaceChildren();
  body.replaceChildren();
  const classes = Object.keys(r.probabilities || (r.timeline && r.timeline.find((w) => w.probabilities) || {}).probabilities || {});
  head.insertRow().innerHTML = ["start", "end", "face", "speech", "emotion", ...classes].map((h) => `<th>${h}</th>`).join("");
  (r.timeline || []).forEach((w) => {
    const cells = [w.start.toFixed(2), w.end.toFixed(2), w.face === null ? "" : (w.face ? "yes" : "no"), w.speech === null ? "" : (w.speech ? "yes" : "no"),
      w.emotion || "-", ...classes.map((c) => (w.probabilities ? pct(w.probabilities[c]) : ""))];
    const row = body.insertRow();
    cells.forEach((t) => { row.insertCell().textContent = t; });
  });
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const f = e.dataTransfer.files[0];
  if (f) send(f, f.name);
});
$("file").addEventListener("change", (e) => { const f = e.target.files[0]; if (f) send(f, f.name); });

$("record").addEventListener("click", async () => {
  let stream;
  if (!navigator.mediaDevices) {  // browsers give the camera only to https pages and to localhost
    status("recording needs this page at http://127.0.0.1 or localhost, or over https; a file can still be dropped", true);
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  } catch (err) {
    status(`no camera or microphone: ${err.message}`, true);
    return;
  }
  const seconds = Number($("seconds").value);
  const preview = $("preview");
  preview.srcObject = stream;
  preview.hidden = false;
  preview.play();
  const chunks = [];
  const recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    preview.hidden = true;
    $("record").disabled = false;
    send(new Blob(chunks, { type: recorder.mimeType }), "recording.webm");
  };
  $("record").disabled = true;
  status(`recording ${seconds} s…`);
  recorder.start();
  setTimeout(() => recorder.stop(), 1000 * seconds);
});
