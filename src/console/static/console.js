// runbook console: the one script of the web console. No framework, no build step.
// - times: <time datetime> shown in UTC or local time, the reader's choice (kept in localStorage);
// - forms with data-confirm ask first;
// - [data-refresh=N] parts of a page are re-read every N seconds (not while you type in them);
// - the run page follows its run live: server-sent events with a resume point (the event id is
//   the number of timeline entries the page holds), polling when the stream goes quiet or fails,
//   and one full reload of the run when it ends, which reconciles anything missed.
(function () {
  "use strict";

  var tzKey = "runbook.tz";
  function localTimes() { try { return localStorage.getItem(tzKey) === "local"; } catch (e) { return false; } }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function showTimes(root) {
    var local = localTimes();
    (root || document).querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) { return; }
      t.textContent = local
        ? d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds())
        : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
      t.title = local ? d.toISOString() : d.toString();
    });
    document.querySelectorAll("[data-tz-toggle]").forEach(function (b) { b.textContent = local ? "Local time" : "UTC"; });
  }

  function fragment(html) { return document.createRange().createContextualFragment(html); }

  function refreshParts() {
    document.querySelectorAll("[data-refresh]").forEach(function (el, index) {
      var every = parseInt(el.getAttribute("data-refresh"), 10) * 1000;
      if (!every) { return; }
      setInterval(function () {
        if (document.hidden || el.contains(document.activeElement)) { return; }
        fetch(location.href, { credentials: "same-origin" }).then(function (r) {
          if (!r.ok || r.redirected) { return null; }
          return r.text();
        }).then(function (text) {
          if (text === null || text === undefined) { return; }
          var doc = new DOMParser().parseFromString(text, "text/html");
          var fresh = doc.querySelectorAll("[data-refresh]")[index];
          if (fresh && !el.contains(document.activeElement)) {
            el.innerHTML = fresh.innerHTML;
            showTimes(el);
          }
        }).catch(function () {});
      }, every);
    });
  }

  function follow(run) {
    var id = run.getAttribute("data-run");
    var seen = parseInt(run.getAttribute("data-seen"), 10) || 0;
    var state = document.getElementById("live-state");
    var lastHeard = Date.now();
    var source = null;
    var pollTimer = null;
    var ended = false;
    function say(text) { if (state) { state.textContent = text; } }

    function apply(update) {
      var timeline = document.getElementById("timeline");
      (update.entries || []).forEach(function (e) {
        if (e.n > seen && timeline) {
          timeline.appendChild(fragment(e.html));
          seen = e.n;
        }
      });
      var status = document.getElementById("run-status");
      if (status && update.status) {
        status.innerHTML = "";
        var span = document.createElement("span");
        span.className = "status s-" + update.status;
        span.textContent = update.status;
        status.appendChild(span);
      }
      showTimes(timeline);
      if (update.ended) { finish(); }
    }

    // The run ended: read the whole run once (the report, the answers, anything missed).
    function finish() {
      if (ended) { return; }
      ended = true;
      if (source) { source.close(); }
      if (pollTimer) { clearInterval(pollTimer); }
      say("ended");
      fetch(location.href, { credentials: "same-origin" }).then(function (r) { return r.text(); }).then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("run");
        if (fresh) {
          run.replaceWith(fresh);
          showTimes(fresh);
          bindConfirms(fresh);
        }
      }).catch(function () {});
    }

    function poll() {
      if (source) { source.close(); source = null; }
      if (pollTimer || ended) { return; }
      say("polling");
      var tick = function () {
        fetch("/ui/runs/" + id + "/timeline?after=" + seen, { credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (u) { if (u) { apply(u); } })
          .catch(function () {});
      };
      tick();
      pollTimer = setInterval(tick, 2000);
    }

    if (!window.EventSource) { poll(); return; }
    source = new EventSource("/ui/runs/" + id + "/events?after=" + seen);
    say("live");
    ["update", "ping", "end"].forEach(function (name) {
      source.addEventListener(name, function (ev) {
        lastHeard = Date.now();
        say("live");
        if (name === "update") { apply(JSON.parse(ev.data)); }
        if (name === "end") { finish(); }
      });
    });
    source.onerror = function () {
      // The browser reconnects by itself, sending Last-Event-ID; a closed stream will not.
      if (source && source.readyState === EventSource.CLOSED) { poll(); }
      else { say("reconnecting"); }
    };
    // A stream that says nothing for 15 s (a proxy holding it) is given up for polling.
    setInterval(function () {
      if (!ended && !pollTimer && Date.now() - lastHeard > 15000) { poll(); }
    }, 3000);
  }

  function bindConfirms(root) {
    (root || document).querySelectorAll("form[data-confirm]").forEach(function (f) {
      f.addEventListener("submit", function (ev) {
        if (!window.confirm(f.getAttribute("data-confirm"))) { ev.preventDefault(); }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    showTimes();
    bindConfirms();
    refreshParts();
    document.querySelectorAll("[data-tz-toggle]").forEach(function (b) {
      b.addEventListener("click", function () {
        try { localStorage.setItem(tzKey, localTimes() ? "utc" : "local"); } catch (e) {}
        showTimes();
      });
    });
    var run = document.getElementById("run");
    if (run && run.getAttribute("data-live") === "yes") { follow(run); }
  });
})();
