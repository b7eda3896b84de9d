"use strict";
const $ = (id) => document.getElementById(id);
$("token").value = sessionStorage.getItem("warngate-token") || "";
$("save").onclick = () => { sessionStorage.setItem("warngate-token", $("token").value); load(); };
let current = null;
const STATES = ["planned","retry","sending","sent","delivered","acknowledged","failed","cancelled"];
const ZH = {planned:"待发",retry:"重试",sending:"发送中",sent:"已发",delivered:"已达",
  acknowledged:"已确认",failed:"失败",cancelled:"已撤销"};
async function api(path) {
  const r = await fetch(path, {headers: {Authorization: "Bearer " + $("token").value}});
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
  return body;
}
function esc(s) { const d = document.createElement("span"); d.textContent = s ?? ""; return d.innerHTML; }
async function load() {
  try {
    const data = await api("/api/v1/alerts");
    $("err").textContent = "";
    $("alerts").innerHTML = data.alerts.map(a =>
      `<li data-id="${a.id}"><span class="${a.level}">■</span> #${a.id} ${esc(a.headline)}
       <span class="muted">(${esc(a.state)})</span></li>`).join("");
    for (const li of $("alerts").children) li.onclick = () => { current = li.dataset.id; board(); };
  } catch (e) { $("err").textContent = e.message; }
}
function row(name, counts) {
  const cells = [];
  for (const ch of Object.keys(counts).sort())
    cells.push(`<td class="l">${esc(ch)}</td>` + STATES.map(s => `<td>${counts[ch][s] || ""}</td>`).join(""));
  return cells.map((c, i) => `<tr>${i ? "" : `<td class="l" rowspan="${cells.length}">${esc(name)}</td>`}${c}</tr>`).join("");
}
async function board() {
  if (!current) return;
  try {
    const b = await api(`/api/v1/alerts/${current}/receipts`);
    const head = `<tr><th class="l">区域</th><th class="l">渠道</th>${STATES.map(s => `<th>${ZH[s]}</th>`).join("")}</tr>`;
    let rows = row("合计", b.totals);
    for (const t of b.townships) {
      rows += row(`${t.name || t.code}`, t.counts);
      for (const v of t.villages) rows += row(`　${v.name || v.code}`, v.counts);
    }
    const a = b.acknowledgement;
    $("title").textContent = `回执 #${current}`;
    $("board").innerHTML = `<p>需叫应 ${a.required} 人，已确认 ${a.acknowledged}，未确认 ${a.waiting}，升级 ${a.escalation_steps} 次</p><table>${head}${rows}</table>`;
  } catch (e) { $("err").textContent = e.message; }
}
load();
setInterval(() => { load(); board(); }, 3000);
