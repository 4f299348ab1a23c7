// Minimal waiting page: join once, poll when the server says, go when admitted.
(function () {
  "use strict";
  var room = new URLSearchParams(location.search).get("room") || "default";
  var base = "/api/v1/rooms/" + encodeURIComponent(room);
  var retryS = 2;

  function show(id, text) { document.getElementById(id).textContent = text; }

  function inWords(seconds) {
    if (seconds === null || seconds === undefined) return "unknown";
    if (seconds < 60) return "less than a minute";
    var minutes = Math.round(seconds / 60);
    return "about " + minutes + (minutes === 1 ? " minute" : " minutes");
  }

  function handle(data) {
    retryS = 2;
    if (data.state === "admitted") {
      show("message", "It is your turn. Taking you there…");
      location.assign(data.redirect);
      return;
    }
    // stale: the server cannot reach its shared store; the place holds.
    show("message", data.stale ? "You are in line. Updating…" : "You are in line.");
    show("position", String(data.position));
    show("ahead", String(data.ahead));
    show("eta", inWords(data.eta_s));
    setTimeout(poll, data.next_poll_s * 1000);
  }

  function retry(next) {
    show("message", "Reconnecting…");
    setTimeout(next, retryS * 1000 * (0.8 + Math.random() * 0.4));
    retryS = Math.min(retryS * 2, 60);
  }

  function request(method, path, next) {
    fetch(base + path, { method: method, credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(handle)
      .catch(function () { retry(next); });
  }

  function join() { request("POST", "/join", join); }
  function poll() { request("GET", "/status", join); }

  join();
})();
