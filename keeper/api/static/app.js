// Zanbara public page: re-fetches the figures every few seconds and updates them in place.
// Works without it: every number is already in the HTML. Same-origin fetches only (CSP default-src 'self').
(function () {
  "use strict";
  var body = document.body;
  if (!body || body.getAttribute("data-page") !== "fund") return;
  var poll = Math.min(5, Math.max(1, parseFloat(body.getAttribute("data-poll")) || 3)) * 1000;
  var range = (new URLSearchParams(location.search).get("range")) || "day";
  var lastBlock = null;
  var W = 600, H = 160, PAD = 6;

  function setAll(display) {
    if (!display) return;
    Object.keys(display).forEach(function (k) {
      var nodes = document.querySelectorAll('[data-k="' + k + '"]');
      for (var i = 0; i < nodes.length; i++) {
        if (nodes[i].textContent !== display[k]) nodes[i].textContent = display[k];
      }
    });
  }

  function group(n) { return n.replace(/\B(?=(\d{3})+(?!\d))/g, ","); }
  function usd0(raw) { var s = String(raw), neg = s[0] === "-"; if (neg) s = s.slice(1);
    var whole = s.length > 6 ? s.slice(0, -6) : "0"; return (neg ? "-" : "") + "$" + group(whole); }
  function pct(bps) { var s = String(bps).padStart(3, "0"); return group(s.slice(0, -2)) + "." + s.slice(-2) + "%"; }

  // Same geometry as keeper/api/render.py chart_points (BigInt: values can exceed 2^53).
  function geometry(points, key) {
    var vals = points.filter(function (p) { return p[key] !== null && p[key] !== undefined; });
    if (!vals.length) return { pts: "", lo: "", hi: "" };
    var ts = vals.map(function (p) { return p.t; });
    var vs = vals.map(function (p) { return BigInt(p[key]); });
    var t0 = Math.min.apply(null, ts), t1 = Math.max.apply(null, ts);
    var v0 = vs.reduce(function (a, b) { return b < a ? b : a; }), v1 = vs.reduce(function (a, b) { return b > a ? b : a; });
    var tspan = (t1 - t0) || 1, vspan = Number(v1 - v0) || 1;
    var pts = vals.map(function (p, i) {
      var x = PAD + (ts[i] - t0) * (W - 2 * PAD) / tspan;
      var y = v1 !== v0 ? H - PAD - Number(vs[i] - v0) * (H - 2 * PAD) / vspan : H / 2;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    var fmt = key === "balance" ? usd0 : pct;
    return { pts: pts.join(" "), lo: fmt(v0.toString()), hi: fmt(v1.toString()) };
  }

  function drawCharts(points) {
    var figs = document.querySelectorAll("figure.chart");
    for (var i = 0; i < figs.length; i++) {
      var key = figs[i].getAttribute("data-series");
      var g = geometry(points, key);
      var line = figs[i].querySelector("polyline");
      if (line) line.setAttribute("points", g.pts);
      var lo = figs[i].querySelector('[data-axis="lo"]'), hi = figs[i].querySelector('[data-axis="hi"]');
      if (lo) lo.textContent = g.lo;
      if (hi) hi.textContent = g.hi;
      var n = figs[i].querySelector('[data-axis="n"]');
      if (n) n.textContent = points.length + " points";
      var links = figs[i].querySelectorAll("a[data-range]");
      for (var j = 0; j < links.length; j++) {
        links[j].className = links[j].getAttribute("data-range") === range ? "on" : "";
      }
    }
  }

  function getJSON(url) {
    return fetch(url, { cache: "no-store", credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    });
  }

  function redraw() {
    return getJSON("/api/insurance-fund/history?range=" + encodeURIComponent(range)).then(function (h) {
      drawCharts(h.points || []);
    });
  }

  function tick() {
    Promise.all([getJSON("/api/insurance-fund"), getJSON("/api/markets")]).then(function (res) {
      var fund = res[0], markets = res[1];
      setAll(fund.display);
      var badge = document.getElementById("stale");
      if (badge && fund.stamp) badge.className = fund.stamp.stale ? "badge stale" : "badge live";
      (markets.markets || []).forEach(function (m) { setAll(m.display); });
      if (fund.stamp && fund.stamp.block_number !== lastBlock) {
        lastBlock = fund.stamp.block_number;
        return redraw();
      }
    }).catch(function () { /* keep the last numbers; the stale mark tells the age */ })
      .then(function () { setTimeout(tick, poll); });
  }

  document.addEventListener("click", function (ev) {
    var a = ev.target.closest ? ev.target.closest("a[data-range]") : null;
    if (!a) return;
    ev.preventDefault();
    range = a.getAttribute("data-range");
    history.replaceState(null, "", "/?range=" + range);
    redraw().catch(function () {});
  });

  setTimeout(tick, poll);
})();
