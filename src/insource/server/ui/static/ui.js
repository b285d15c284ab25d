// Draws every chart of a page from the figure JSON next to it, and asks before a row's button acts.
(function () {
  "use strict";
  function draw() {
    var charts = document.querySelectorAll("div.chart[data-figure]");
    for (var i = 0; i < charts.length; i++) {
      var el = charts[i];
      var source = document.getElementById(el.getAttribute("data-figure"));
      if (!source || typeof Plotly === "undefined") { continue; }
      var fig = JSON.parse(source.textContent);
      Plotly.newPlot(el, fig.data, fig.layout, {displaylogo: false, responsive: true});
    }
  }
  function confirmations() {
    var forms = document.querySelectorAll("form[data-confirm]");
    for (var i = 0; i < forms.length; i++) {
      forms[i].addEventListener("submit", function (event) {
        var text = this.getAttribute("data-confirm");
        if (text && !window.confirm(text)) { event.preventDefault(); }
      });
    }
  }
  function ready() { draw(); confirmations(); }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", ready); } else { ready(); }
})();
