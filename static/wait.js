// The waiting page: join once, poll when the server asks, go when admitted.
// Every word shown comes from the "text" table of config.json (beside this
// file), so a site translates or rewords the page there and nowhere else.
(() => {
  "use strict";

  // After a failed request: wait 1 s, doubling up to 60 s, times a random
  // factor in [0.5, 1), so a crowd cut off together does not return together.
  const BACKOFF_FIRST_S = 1;
  const BACKOFF_MAX_S = 60;
  // When the server names no interval (a closed room, which may reopen):
  // asking once a minute is enough to notice.
  const SLOW_POLL_S = 60;
  // When a scheduled opening arrives, everyone asks within this many
  // seconds, spread at random rather than at the same instant.
  const OPENING_SPREAD_S = 5;
  const ROOM_NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;

  const script = document.currentScript;
  const params = new URLSearchParams(location.search);
  const page = document.getElementById("page");
  const $ = (id) => document.getElementById(id);

  // Steps run before each join, in order, each returning a promise, for a
  // site that needs one (the proof of work comes as the join's answer).
  const beforeJoin = [];

  let text = {};
  let lang = "en";
  let api = "";
  let room = "default";
  let returnTo = null;
  let storageKey = "";
  let saved = {};
  let failures = 0;
  let timer = 0;
  let clock = 0;
  let openingPolled = false;
  // A solved proof-of-work challenge, sent with the next join (wr/pow.py).
  let proof = null;

  function t(name, values) {
    const known = Object.prototype.hasOwnProperty.call(text, name);
    let words = known ? String(text[name]) : name;
    for (const [key, value] of Object.entries(values || {})) {
      words = words.split("{" + key + "}").join(value);
    }
    return words;
  }

  // Assistive technology reads a live region again whenever it is written,
  // so unchanged words are not written: updates stay quiet unless they say
  // something new.
  function put(id, words) {
    const el = $(id);
    if (el.textContent !== words) el.textContent = words;
  }

  function number(n) {
    return Number(n).toLocaleString(lang);
  }

  function etaWords(s) {
    if (s === null || s === undefined) return t("eta_unknown");
    if (s < 60) return t("eta_under_minute");
    const minutes = Math.floor(s / 60 + 0.5);
    if (minutes === 1) return t("eta_minute");
    if (minutes < 90) return t("eta_minutes", { n: minutes });
    return t("eta_hours", { n: Math.floor(s / 3600 + 0.5) });
  }

  function load() {
    try {
      const value = JSON.parse(localStorage.getItem(storageKey) || "{}");
      return value && typeof value === "object" ? value : {};
    } catch (e) {
      return {};
    }
  }

  // Without storage (some private modes) the queue cookie keeps the place.
  function store() {
    try {
      localStorage.setItem(storageKey, JSON.stringify(saved));
    } catch (e) {
      /* the cookie still holds the place */
    }
  }

  function schedule(seconds, next) {
    clearTimeout(timer);
    timer = setTimeout(next, Math.max(0, seconds) * 1000);
  }

  function backoff() {
    failures += 1;
    const cap = Math.min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (failures - 1));
    return cap * (0.5 + Math.random() / 2);
  }

  function show(state, data) {
    page.dataset.state = state;
    put("title", t("title_" + state));
    put("message", t("msg_" + state));
    $("home").hidden = state !== "closed";
    // Before opening, the draw decides the order: a number would mislead.
    const place = data && data.position !== undefined && state !== "prequeue";
    $("line").hidden = !place;
    if (place) {
      put("position", number(data.position));
      const moving = data.ahead !== undefined;
      $("ahead-box").hidden = $("eta-box").hidden = !moving;
      $("progress-box").hidden = !moving;
      if (moving) {
        put("ahead", number(data.ahead));
        put("eta", state === "paused" ? t("eta_paused") : etaWords(data.eta_s));
        const first = Math.max(saved.first || 0, data.ahead);
        $("progress").value = first ? (100 * (first - data.ahead)) / first : 100;
      }
    }
    if (data) {
      put("updated", t("updated", { time: new Date().toLocaleTimeString(lang) }));
    }
    countdown(state === "prequeue" ? Date.parse(data.opens_at) : NaN);
  }

  function countdown(opensAt) {
    clearInterval(clock);
    $("opening").hidden = Number.isNaN(opensAt);
    if (Number.isNaN(opensAt)) return;
    const pad = (n) => String(n).padStart(2, "0");
    const tick = () => {
      const left = Math.max(0, Math.ceil((opensAt - Date.now()) / 1000));
      const days = Math.floor(left / 86400);
      const hms = [Math.floor(left / 3600) % 24, Math.floor(left / 60) % 60, left % 60];
      const prefix = days ? t("days", { n: days }) + " " : "";
      put("countdown", prefix + hms.map(pad).join(":"));
      if (left === 0) {
        clearInterval(clock);
        // Once: a visitor's clock running ahead of the server's must not
        // turn into a poll every few seconds; next_poll_s rules after that.
        if (!openingPolled) schedule(Math.random() * OPENING_SPREAD_S, poll);
        openingPolled = true;
      }
    };
    tick();
    clock = setInterval(tick, 1000);
  }

  function reconnecting(seconds) {
    put("notice", t("msg_reconnecting"));
    page.classList.add("reconnecting");
    schedule(seconds, saved.token ? poll : join);
  }

  // The server answered: whatever it said, the connection is back.
  function connected() {
    put("notice", "");
    page.classList.remove("reconnecting");
  }

  function handle(data) {
    failures = 0;
    connected();
    if (data.queue_token) saved.token = data.queue_token;
    if (data.ahead !== undefined && !(saved.first >= data.ahead)) {
      saved.first = data.ahead;
    }
    store();
    if (data.state === "admitted") {
      show("admitted");
      // A target given as a path lives with the API, not with the page.
      const base = api ? api + "/" : location.href;
      location.replace(new URL(data.redirect, base).href);
      return;
    }
    show(data.state, data);
    schedule(data.next_poll_s > 0 ? data.next_poll_s : SLOW_POLL_S, poll);
    // stale: the server cannot reach its shared store (several hosts through
    // Redis); the place holds and the figures catch up once it can.
    if (data.stale) put("notice", t("msg_updating"));
  }

  async function request(method, action, body) {
    const headers = {};
    if (saved.token) headers.authorization = "Bearer " + saved.token;
    let answer;
    let data;
    try {
      const url = api + "/api/v1/rooms/" + encodeURIComponent(room) + "/" + action;
      const options = { method, headers, credentials: "include", cache: "no-store" };
      // Sent as text/plain, which spares a cross-origin page a preflight.
      if (body !== undefined) options.body = JSON.stringify(body);
      answer = await fetch(url, options);
      data = (await answer.json()) || {};
    } catch (e) {
      reconnecting(backoff());
      return;
    }
    if (answer.ok) {
      handle(data);
      return;
    }
    const retryAfter = Number(answer.headers.get("retry-after")) || 0;
    const down = answer.status >= 500 || answer.status === 429;
    if (!down || data.error === "queue_full") connected();
    if (answer.status === 401 && saved.token) {
      // The token expired or the keys changed: the place is gone, take a new one.
      saved = {};
      store();
      join();
    } else if (data.error === "queue_full") {
      show("full");
      schedule(Math.max(retryAfter, backoff()), join);
    } else if (answer.status === 403 && data.challenge) {
      solve(data.challenge);
    } else if (data.error === "closed") {
      show("closed");
      schedule(SLOW_POLL_S, join);
    } else if (down) {
      reconnecting(Math.max(retryAfter, backoff()));
    } else {
      show("error");
      schedule(backoff(), saved.token ? poll : join);
    }
  }

  async function join() {
    try {
      for (const step of beforeJoin) await step();
    } catch (e) {
      reconnecting(backoff());
      return;
    }
    const body = proof ? { pow: proof } : undefined;
    proof = null;
    await request("POST", "join", body);
  }

  // The room asks for a proof of work: solve the challenge in a worker
  // (pow-worker.js, beside this file), then join again with the answer.
  function solve(challenge) {
    show("checking");
    let worker;
    const failed = () => {
      if (worker) worker.terminate();
      show("error");
      schedule(backoff(), join);
    };
    try {
      worker = new Worker(new URL("pow-worker.js", script.src));
    } catch (e) {
      failed();
      return;
    }
    worker.onerror = failed;
    worker.onmessage = (event) => {
      const result = event.data || {};
      if (result.error) {
        failed();
        return;
      }
      worker.terminate();
      failures = 0;
      proof = {
        challenge: challenge.challenge,
        counter: result.counter,
        solve_ms: result.solve_ms,
      };
      join();
    };
    worker.postMessage({
      challenge: challenge.challenge,
      difficulty: challenge.difficulty,
    });
  }

  function poll() {
    const query = returnTo === null ? "" : "?return=" + encodeURIComponent(returnTo);
    return request("GET", "status" + query);
  }

  function apply(config) {
    text = config.text || {};
    lang = config.lang || "en";
    // Another API only if config.json lists it: a link must not be able to
    // send people, and their tokens, to a waiting room of its choosing.
    const wanted = params.get("api");
    const allowed = Array.isArray(config.apis) && config.apis.includes(wanted);
    api = ((allowed && wanted) || config.api || "").replace(/\/+$/, "");
    const named = params.get("room");
    room = named && ROOM_NAME.test(named) ? named : config.room || "default";
    returnTo = params.get("return");
    storageKey = "wr:" + api + ":" + room;
    document.documentElement.lang = lang;
    document.title = t("page_title");
    for (const el of document.querySelectorAll("[data-t]")) {
      el.textContent = t(el.dataset.t);
    }
    if (config.home_url) $("home-link").href = config.home_url;
  }

  async function start() {
    let config;
    try {
      const answer = await fetch(new URL("config.json", script.src));
      if (!answer.ok) throw new Error(String(answer.status));
      config = await answer.json();
    } catch (e) {
      // Without its words the page has nothing to say; it tries again.
      setTimeout(start, backoff() * 1000);
      return;
    }
    failures = 0;
    apply(config);
    saved = load();
    show("loading");
    if (saved.token) poll();
    else join();
  }

  start();
})();
