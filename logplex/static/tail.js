// logplex live tail: sign in, pick a channel, read its backlog then live lines.
//
// The stream is GET /v3/channels/<channel>/stream, Server-Sent Events read
// with fetch() (EventSource cannot send an Authorization header, and the
// secret must never go into a URL). Each event is one JSON line
// {ts, source, ps, severity, msg}; "ready" ends the backlog, "l11" says the
// node dropped lines this page read too slowly, "notice" is a remark.
"use strict";

(() => {
  const MAX_ROWS = 5000;        // lines kept on the page; older ones leave the top
  const PAUSE_HOLD = 5000;      // lines held while paused before the page stops reading
  const RETRY_MAX_MS = 30000;
  const SEVERITY = ["emerg", "alert", "crit", "err", "warn", "notice", "info", "debug"];

  const $ = (id) => document.getElementById(id);
  const el = {
    signIn: $("sign-in"), credId: $("cred-id"), credSecret: $("cred-secret"),
    signInButton: $("sign-in-button"), signInError: $("sign-in-error"),
    signOut: $("sign-out"), who: $("who"),
    watchBox: $("watch-box"), watchSummary: $("watch-summary"),
    watch: $("watch"), channel: $("channel"), channelList: $("channel-list"),
    channelHint: $("channel-hint"), source: $("source"), ps: $("ps"), num: $("num"),
    watchError: $("watch-error"),
    viewer: $("viewer"), filter: $("filter"), pause: $("pause"), localTime: $("local-time"),
    counts: $("counts"), state: $("state"), drops: $("drops"),
    log: $("log"), lines: $("lines"), jump: $("jump"),
  };

  // The credential lives only here, for as long as the tab does.
  let auth = null;
  let credentialId = "";

  // The current stream.
  let generation = 0;
  let controller = null;
  let watching = null;          // {channel, source, ps, num}
  let retryTimer = null;
  let retryDelay = 1000;

  // What the page shows.
  let paused = false;
  let pending = [];             // events that came while paused
  let wakeReader = null;        // resolves when a paused reader may go on
  let follow = true;
  let received = 0;
  let shown = 0;
  let dropped = 0;
  let filterText = "";

  // -- helpers ------------------------------------------------------------------------
  function basicAuth(id, secret) {
    const bytes = new TextEncoder().encode(id + ":" + secret);
    let binary = "";
    for (const b of bytes) binary += String.fromCharCode(b);
    return "Basic " + btoa(binary);
  }

  async function errorText(response, fallback) {
    try {
      const doc = await response.json();
      if (doc && typeof doc.error === "string") return doc.error;
    } catch (e) { /* not JSON */ }
    return fallback;
  }

  function setState(state, text) {
    el.state.dataset.state = state;
    el.state.textContent = text;
  }

  function pad(n, width = 2) {
    return String(n).padStart(width, "0");
  }

  const STAMP = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/;

  // An RFC 3339 time in the browser's time zone, keeping its fraction of a second.
  function localStamp(ts) {
    const m = STAMP.exec(ts);
    if (!m) return ts;
    const frac = m[2] || "";
    const d = new Date(m[1] + (frac ? "." + (frac + "00").slice(0, 3) : "") + m[3]);
    if (Number.isNaN(d.getTime())) return ts;
    const offset = -d.getTimezoneOffset();
    const sign = offset < 0 ? "-" : "+";
    const abs = Math.abs(offset);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) +
      (frac ? "." + frac : "") + " " + sign + pad(Math.floor(abs / 60)) + ":" + pad(abs % 60);
  }

  function showTime(timeEl) {
    const ts = timeEl.dateTime;
    timeEl.textContent = el.localTime.checked ? localStamp(ts) : ts;
  }

  // -- rows ----------------------------------------------------------------------------
  function lineRow(ev, kind) {
    const li = document.createElement("li");
    const severity = Number.isInteger(ev.severity) && ev.severity >= 0 && ev.severity <= 7 ? ev.severity : 6;
    li.className = "line sev-" + severity + (kind ? " " + kind : "");
    const time = document.createElement("time");
    time.className = "ts";
    time.dateTime = String(ev.ts || "");
    showTime(time);
    const sev = document.createElement("span");
    sev.className = "sev";
    sev.textContent = SEVERITY[severity];
    const src = document.createElement("span");
    src.className = "src";
    src.textContent = (ev.source || "") + (ev.ps ? "[" + ev.ps + "]" : "") + ":";
    const msg = document.createElement("span");
    msg.className = "msg";
    msg.textContent = String(ev.msg || "");
    li.append(time, sev, src, msg);
    li.search = (SEVERITY[severity] + " " + src.textContent + " " + msg.textContent).toLowerCase();
    li.counted = !kind;
    return li;
  }

  function noteRow(text) {
    const li = document.createElement("li");
    li.className = "line note";
    li.textContent = text;
    return li;
  }

  function matches(li) {
    return !filterText || li.search === undefined || li.search.includes(filterText);
  }

  function nearBottom() {
    return el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 24;
  }

  function scrollToEnd() {
    el.log.scrollTop = el.log.scrollHeight;
  }

  function append(rows) {
    if (!rows.length) return;
    const fragment = document.createDocumentFragment();
    for (const li of rows) {
      li.hidden = !matches(li);
      if (li.counted) {
        received += 1;
        if (!li.hidden) shown += 1;
      }
      fragment.append(li);
    }
    el.lines.append(fragment);
    const excess = el.lines.childElementCount - MAX_ROWS;
    if (excess > 0) {
      const before = el.log.scrollHeight;
      for (let i = 0; i < excess; i++) {
        const first = el.lines.firstElementChild;
        if (first.counted && !first.hidden) shown -= 1;
        first.remove();
      }
      // Someone reading older lines keeps their place while the top goes.
      if (!follow) el.log.scrollTop -= before - el.log.scrollHeight;
    }
    if (follow) scrollToEnd();
    updateCounts();
  }

  function updateCounts() {
    let text = received + (received === 1 ? " line" : " lines");
    if (filterText) text += " · " + shown + " match";
    if (paused && pending.length) text += " · " + pending.length + " waiting";
    el.counts.textContent = text;
    if (paused) el.pause.textContent = pending.length ? "Resume (" + pending.length + " new)" : "Resume";
  }

  function clearLines() {
    el.lines.replaceChildren();
    received = shown = dropped = 0;
    pending = [];
    el.drops.hidden = true;
    el.drops.textContent = "";
    follow = true;
    el.jump.hidden = true;
    updateCounts();
  }

  // -- events from the stream -------------------------------------------------------------
  function parseEvent(block) {
    let type = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return null;
    try {
      return { type, data: JSON.parse(data.join("\n")) };
    } catch (e) {
      return null;
    }
  }

  function take(events) {
    const rows = [];
    for (const ev of events) {
      if (ev.type === "message") {
        if (paused) pending.push(ev);
        else rows.push(lineRow(ev.data));
      } else if (ev.type === "l11") {
        dropped += Number(ev.data.dropped) || 0;
        el.drops.textContent = "The node dropped " + dropped + (dropped === 1 ? " line" : " lines") +
          " because this page read too slowly (L11). The lines around the notice in the log are the newest it kept.";
        el.drops.hidden = false;
        if (paused) pending.push(ev);
        else rows.push(lineRow(ev.data, "l11"));
      } else if (ev.type === "ready") {
        retryDelay = 1000;
        if (ev.data.live) {
          setState(paused ? "paused" : "live", paused ? "Paused" : "Live");
        } else {
          setState("closed", "Backlog only");
        }
      } else if (ev.type === "notice" || ev.type === "revoked") {
        rows.push(noteRow(String(ev.data.msg || "")));
      }
    }
    append(rows);
    updateCounts();
  }

  // -- the stream -----------------------------------------------------------------------
  function streamUrl(w, again) {
    const query = new URLSearchParams();
    // After a lost connection only new lines: the backlog is already on the page.
    query.set("num", again ? "0" : String(w.num));
    if (w.source) query.set("source", w.source);
    if (w.ps) query.set("ps", w.ps);
    return "/v3/channels/" + encodeURIComponent(w.channel) + "/stream?" + query.toString();
  }

  function stopStream() {
    generation += 1;
    if (controller) controller.abort();
    controller = null;
    clearTimeout(retryTimer);
    retryTimer = null;
    if (wakeReader) wakeReader();
  }

  async function readStream(w, again) {
    const mine = generation;
    controller = new AbortController();
    setState("connecting", again ? "Reconnecting…" : "Connecting…");
    let response;
    try {
      response = await fetch(streamUrl(w, again), {
        headers: { Authorization: auth, Accept: "text/event-stream" },
        cache: "no-store",
        credentials: "omit",
        signal: controller.signal,
      });
    } catch (e) {
      if (mine === generation) lost(w, "The node did not answer.");
      return;
    }
    if (mine !== generation) return;
    if (!response.ok) {
      const message = await errorText(response, "The node answered " + response.status + ".");
      if (mine !== generation) return;
      if (response.status === 401) {
        signOut("The node no longer accepts this credential: " + message);
      } else if (response.status >= 500 && again) {
        lost(w, message);
      } else {
        setState("error", "Not connected");
        el.watchError.textContent = message;
        el.watchBox.open = true;
      }
      return;
    }
    el.watchError.textContent = "";
    if (again) append([noteRow("Reconnected. Lines sent while the page was disconnected are not shown.")]);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        // Paused with a full hold: stop reading, so the node holds (and,
        // past its buffer, drops and reports with L11) what comes next.
        while (paused && pending.length >= PAUSE_HOLD && mine === generation) {
          await new Promise((resolve) => { wakeReader = resolve; });
          wakeReader = null;
        }
        if (mine !== generation) return;
        const { value, done } = await reader.read();
        if (mine !== generation) return;
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        const blocks = buffer.split("\n\n");
        buffer = blocks.pop();
        take(blocks.map(parseEvent).filter(Boolean));
      }
    } catch (e) {
      if (mine !== generation) return;
    } finally {
      reader.cancel().catch(() => {});
    }
    if (mine !== generation) return;
    if (el.state.dataset.state === "closed") return;   // a backlog-only answer ends by itself
    lost(w, "The connection to the node was lost.");
  }

  function lost(w, why) {
    const delay = retryDelay;
    retryDelay = Math.min(retryDelay * 2, RETRY_MAX_MS);
    setState("error", why + " Retrying in " + Math.round(delay / 1000) + " s.");
    const mine = generation;
    retryTimer = setTimeout(() => {
      if (mine === generation) readStream(w, true);
    }, delay);
  }

  function startWatching(w) {
    stopStream();
    watching = w;
    retryDelay = 1000;
    clearLines();
    setPaused(false);
    el.viewer.hidden = false;
    // The form folds into one line saying what is watched; the log gets the room.
    let summary = "Watching " + w.channel;
    if (w.source) summary += " · source " + w.source;
    if (w.ps) summary += " · process " + w.ps;
    el.watchSummary.textContent = summary + " (change)";
    el.watchBox.open = false;
    document.title = w.channel + " · logplex tail";
    readStream(w, false);
  }

  // -- pause and resume -----------------------------------------------------------------
  function setPaused(on) {
    paused = on;
    el.pause.setAttribute("aria-pressed", on ? "true" : "false");
    el.pause.textContent = on ? "Resume" : "Pause";
    if (!on && pending.length) {
      const held = pending;
      pending = [];
      append(held.map((ev) => (ev.type === "l11" ? lineRow(ev.data, "l11") : lineRow(ev.data))));
    }
    if (!on && wakeReader) wakeReader();
    const state = el.state.dataset.state;
    if (state === "live" || state === "paused") setState(on ? "paused" : "live", on ? "Paused" : "Live");
    updateCounts();
  }

  // -- sign in and out ------------------------------------------------------------------
  async function signIn(event) {
    event.preventDefault();
    const id = el.credId.value.trim();
    const secret = el.credSecret.value;
    el.signInError.textContent = "";
    if (!id || !secret) {
      el.signInError.textContent = "Enter a credential id and its secret.";
      (id ? el.credSecret : el.credId).focus();
      return;
    }
    el.signInButton.disabled = true;
    const header = basicAuth(id, secret);
    let response;
    try {
      response = await fetch("/tail/channels", {
        headers: { Authorization: header }, cache: "no-store", credentials: "omit",
      });
    } catch (e) {
      el.signInError.textContent = "The node did not answer.";
      el.signInButton.disabled = false;
      return;
    }
    el.signInButton.disabled = false;
    if (response.status === 401) {
      el.signInError.textContent = "Wrong credential id or secret.";
      el.credSecret.focus();
      return;
    }
    if (!response.ok) {
      el.signInError.textContent = await errorText(response, "The node answered " + response.status + ".");
      return;
    }
    const doc = await response.json();
    auth = header;
    credentialId = id;
    el.credSecret.value = "";
    el.signIn.hidden = true;
    el.who.textContent = "Signed in as " + credentialId;
    el.who.hidden = false;
    el.signOut.hidden = false;
    el.watchSummary.textContent = "Pick a channel";
    el.watchBox.hidden = false;
    el.watchBox.open = true;
    const options = doc.channels.map((name) => {
      const option = document.createElement("option");
      option.value = name;
      return option;
    });
    el.channelList.replaceChildren(...options);
    if (doc.any) {
      el.channelHint.textContent = doc.channels.length + (doc.more ? "+" : "") +
        " channels; type to pick one.";
    } else {
      el.channelHint.textContent = doc.channels.length
        ? "This credential reads: " + doc.channels.join(", ") + "."
        : "This credential names no existing channel.";
    }
    if (doc.channels.length === 1) el.channel.value = doc.channels[0];
    el.channel.focus();
  }

  function signOut(message) {
    stopStream();
    auth = null;
    credentialId = "";
    watching = null;
    clearLines();
    setState("closed", "Not connected");
    el.viewer.hidden = true;
    el.watchBox.hidden = true;
    el.watchError.textContent = "";
    el.who.hidden = true;
    el.who.textContent = "";
    el.signOut.hidden = true;
    el.channelList.replaceChildren();
    el.signIn.hidden = false;
    el.signInError.textContent = typeof message === "string" ? message : "";
    document.title = "logplex · live tail";
    el.credId.focus();
  }

  function watch(event) {
    event.preventDefault();
    el.watchError.textContent = "";
    const channel = el.channel.value.trim();
    if (!channel) {
      el.watchError.textContent = "Pick a channel.";
      el.channel.focus();
      return;
    }
    let num = parseInt(el.num.value, 10);
    if (Number.isNaN(num) || num < 0) num = 100;
    startWatching({ channel, source: el.source.value.trim(), ps: el.ps.value.trim(), num });
    // The form has folded away with the button that had the focus: the log takes it.
    el.log.focus();
  }

  // -- the free-text filter, time zone, scrolling, keys ---------------------------------
  function applyFilter() {
    filterText = el.filter.value.trim().toLowerCase();
    shown = 0;
    for (const li of el.lines.children) {
      li.hidden = !matches(li);
      if (li.counted && !li.hidden) shown += 1;
    }
    if (follow) scrollToEnd();
    updateCounts();
  }

  function typing(target) {
    return target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement ||
      target instanceof HTMLSelectElement || (target && target.isContentEditable);
  }

  el.signIn.addEventListener("submit", signIn);
  el.watch.addEventListener("submit", watch);
  el.signOut.addEventListener("click", () => signOut(""));
  el.filter.addEventListener("input", applyFilter);
  el.filter.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && el.filter.value) {
      e.preventDefault();
      el.filter.value = "";
      applyFilter();
    }
  });
  el.pause.addEventListener("click", () => setPaused(!paused));
  el.localTime.addEventListener("change", () => {
    for (const time of el.lines.querySelectorAll("time")) showTime(time);
  });
  el.log.addEventListener("scroll", () => {
    follow = nearBottom();
    el.jump.hidden = follow;
  });
  el.jump.addEventListener("click", () => {
    follow = true;
    scrollToEnd();
    el.jump.hidden = true;
  });
  document.addEventListener("keydown", (e) => {
    if (el.viewer.hidden || e.ctrlKey || e.metaKey || e.altKey || typing(e.target)) return;
    if (e.key === "/") {
      e.preventDefault();
      el.filter.focus();
    } else if (e.key === "p" || e.key === "P") {
      e.preventDefault();
      setPaused(!paused);
    }
  });
  el.credId.focus();
})();
