// Outpost console: what a page cannot do without a script. Every page works without it.
"use strict";

// Refreshes the part of a page marked data-refresh (seconds) in place, while the tab is
// visible and nobody is typing in a form.
function startRefresh(box) {
  const every = Number(box.dataset.refresh) * 1000;
  if (!(every > 0)) return;
  setInterval(async () => {
    if (document.hidden) return;
    const active = document.activeElement;
    if (active && active.closest("form")) return;
    try {
      const answer = await fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (answer.redirected || !answer.ok) return;
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.querySelector(".refresh[data-refresh]");
      if (fresh) box.replaceChildren(...fresh.childNodes);
      const counts = page.querySelector("#counts");
      const here = document.querySelector("#counts");
      if (counts && here) here.replaceWith(counts);
    } catch (_) {
      // The next round tries again.
    }
  }, every);
}

// The logs page's live tail: while checked, asks every 2 s for lines committed since the newest
// shown and puts them on top (500 rows at most).
function startTail(box) {
  const table = document.querySelector("#logs tbody");
  if (!table) return;
  let cursor = box.dataset.cursor;
  let timer = null;
  const base = box.dataset.tail;
  async function poll() {
    try {
      const url = base + (base.includes("?") && !base.endsWith("?") ? "&" : "") + "cursor=" + encodeURIComponent(cursor);
      const answer = await fetch(url, { credentials: "same-origin" });
      if (!answer.ok) return;
      cursor = answer.headers.get("x-next-cursor") || cursor;
      const text = await answer.text();
      if (text.trim() === "") return;
      const holder = document.createElement("tbody");
      holder.innerHTML = text;
      const rows = Array.from(holder.children);
      rows.forEach((r) => r.classList.add("fresh"));
      table.prepend(...rows);
      while (table.children.length > 500) table.lastElementChild.remove();
    } catch (_) {
      // The next round tries again.
    }
  }
  box.addEventListener("change", () => {
    if (box.checked && timer === null) { poll(); timer = setInterval(poll, 2000); }
    if (!box.checked && timer !== null) { clearInterval(timer); timer = null; }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".refresh[data-refresh]").forEach(startRefresh);
  const live = document.querySelector("#live[data-tail]");
  if (live) startTail(live);
});
