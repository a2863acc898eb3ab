// Live updates of a loan page: on any event of the party's loans (the SSE stream,
// signed in by the session cookie) and every two seconds (price moves change the LTV
// without an event), the live part is fetched again and swapped in. No reload.
(function () {
  var live = document.getElementById("live");
  if (!live) return;
  var id = live.getAttribute("data-loan");
  var busy = false;
  function refresh() {
    if (busy) return;
    busy = true;
    fetch("/loans/" + encodeURIComponent(id) + "/live", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) live.innerHTML = extract(html); })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  // The fragment comes as a whole page from the same layout: take its <main>.
  function extract(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var main = doc.querySelector("main");
    return main ? main.innerHTML : html;
  }
  var names = ["accepted", "collateral_changed", "activated", "reactivated",
    "funding_reorged_out", "margin_call", "margin_call_cleared", "breach_tick",
    "breach_cleared", "liquidation_decided", "repayment_recorded", "repaid",
    "tx_broadcast", "tx_confirmed", "tx_reorged_out", "closed_on_chain",
    "closed_on_chain_reorged_out", "expired"];
  if (window.EventSource) {
    var source = new EventSource("/v1/events/stream");
    names.forEach(function (n) {
      source.addEventListener(n, function (e) {
        try { if (JSON.parse(e.data).loan_id === id) refresh(); } catch (_) { refresh(); }
      });
    });
  }
  setInterval(refresh, 2000);
})();
