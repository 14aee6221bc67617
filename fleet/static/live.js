/* GreenGate home page: live updates without reloading (docs/dashboard.md#live-updates).
   Polls the fragment's JSON with the ETag of what is shown; 304 = nothing changed.
   Any gunicorn worker can answer: the ETag is a hash of the answer, made from the
   database, not a counter in one process. Paused while the tab is hidden. */
(function () {
  "use strict";
  var root = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!root || !window.fetch) return;  // without a script the page is still complete
  var url = root.getAttribute("data-live");
  var etag = '"' + root.getAttribute("data-etag") + '"';
  var every = parseInt(root.getAttribute("data-poll"), 10) || 3000;
  var title = document.title;

  // The page's times are Vietnam time whatever the browser's zone (docs/dashboard.md):
  // the server's clock (the answer's Date header) shifted by the zone's offset, which
  // the page carries (ICT has no summer time); the browser's clock only without a Date.
  var offset = parseInt(status.getAttribute("data-utc-offset"), 10) || 0;

  function say(key, served) {
    var ms = served ? Date.parse(served) : NaN;
    var now = new Date((isNaN(ms) ? Date.now() : ms) + offset * 1000);
    var time = [now.getUTCHours(), now.getUTCMinutes(), now.getUTCSeconds()].map(function (n) {
      return (n < 10 ? "0" : "") + n;
    }).join(":");
    status.textContent = status.getAttribute(key).replace("%(time)s", time);
    status.className = "live-status " + (key === "data-msg-live" ? "muted" : "error");
  }

  function poll() {
    if (document.hidden) { setTimeout(poll, every); return; }
    fetch(url, {headers: {"If-None-Match": etag, "Accept": "application/json"},
                credentials: "same-origin", cache: "no-store"})
      .then(function (r) {
        if (r.status === 401) { say("data-msg-login"); return "stop"; }
        var served = r.headers.get("Date");
        if (r.status === 304) { say("data-msg-live", served); return null; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        etag = r.headers.get("ETag") || etag;
        return r.json().then(function (data) {
          root.innerHTML = data.html;
          var down = data.counts.offline;
          document.title = (down ? "(" + down + ") " : "") + title;
          say("data-msg-live", served);
        });
      })
      .then(function (result) { if (result !== "stop") setTimeout(poll, every); },
            function () { say("data-msg-lost"); setTimeout(poll, every); });
  }
  setTimeout(poll, every);
})();
