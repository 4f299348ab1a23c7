// Proof of work for joining (wr/pow.py): find the smallest counter such that
// SHA-256(challenge + counter) starts with `difficulty` zero bits. Runs in a
// Web Worker so the page stays responsive; WebCrypto needs a secure context
// (HTTPS, or localhost).
"use strict";

// Digests in flight at once: WebCrypto answers each with a promise, and
// waiting on a batch costs far less than waiting on each in turn.
var BATCH = 256;

function zeroBits(bytes) {
  var bits = 0;
  for (var i = 0; i < bytes.length; i++) {
    if (bytes[i] === 0) { bits += 8; continue; }
    return bits + Math.clz32(bytes[i]) - 24;
  }
  return bits;
}

self.onmessage = function (event) {
  var challenge = event.data.challenge;
  var difficulty = event.data.difficulty;
  var encoder = new TextEncoder();
  var started = performance.now();
  if (!self.crypto || !self.crypto.subtle) {
    self.postMessage({ error: "insecure" });
    return;
  }

  function round(base) {
    var pending = [];
    for (var i = 0; i < BATCH; i++) {
      pending.push(crypto.subtle.digest("SHA-256", encoder.encode(challenge + (base + i))));
    }
    return Promise.all(pending).then(function (digests) {
      for (var i = 0; i < digests.length; i++) {
        if (zeroBits(new Uint8Array(digests[i])) >= difficulty) {
          self.postMessage({
            counter: String(base + i),
            solve_ms: Math.round(performance.now() - started)
          });
          return;
        }
      }
      return round(base + BATCH);
    });
  }

  round(0).catch(function () { self.postMessage({ error: "failed" }); });
};
