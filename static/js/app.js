// Flotilla's small glue: parameter rows of the builder and Plotly figures in swapped fragments.
(function () {
  "use strict";

  function renderPlots(root) {
    if (typeof Plotly === "undefined") return;
    root.querySelectorAll("[data-figure]").forEach(function (el) {
      var source = document.getElementById(el.dataset.figure);
      if (!source) return;
      var figure = JSON.parse(source.textContent);
      Plotly.react(el, figure.data, figure.layout, { responsive: true, displaylogo: false });
      if (!el.dataset.linked) {  // points and bars that carry a member URL open it
        el.dataset.linked = "1";
        el.on("plotly_click", function (data) {
          var url = data.points.length && data.points[0].customdata;
          if (typeof url === "string" && url.charAt(0) === "/") window.location.href = url;
        });
      }
    });
  }

  function addParamRow(button) {
    var form = button.closest("form");
    var total = form.querySelector("input[name$='-TOTAL_FORMS']");
    var template = document.getElementById("param-row-template");
    var index = parseInt(total.value, 10);
    var html = template.innerHTML.replace(/__prefix__/g, String(index));
    document.getElementById("param-rows").insertAdjacentHTML("beforeend", html);
    total.value = String(index + 1);
    var rows = document.querySelectorAll("[data-param-row]");
    rows[rows.length - 1].querySelector(".param-name").focus();
  }

  function removeParamRow(button) {
    var row = button.closest("[data-param-row]");
    var flag = row.querySelector("[data-delete]");
    flag.checked = true;
    row.hidden = true;
    flag.dispatchEvent(new Event("change", { bubbles: true }));
  }

  document.addEventListener("click", function (event) {
    var add = event.target.closest("[data-add-param]");
    if (add) { addParamRow(add); return; }
    var remove = event.target.closest("[data-remove-param]");
    if (remove) removeParamRow(remove);
  });

  // Reconnect quickly after a server restart: backoff from 0.5 s, capped at 5 s, with jitter
  // (the ws extension's default grows to a minute).
  if (window.htmx) {
    htmx.config.wsReconnectDelay = function (retryCount) {
      var delay = Math.min(500 * Math.pow(2, retryCount), 5000);
      return delay / 2 + Math.random() * delay / 2;
    };
  }

  // Live pages: say whether the websocket is connected; keep log tails scrolled to the end.
  function setLiveState(text) {
    var state = document.getElementById("live-state");
    if (state) state.textContent = text;
  }
  document.addEventListener("htmx:wsOpen", function () { setLiveState("live"); });
  document.addEventListener("htmx:wsClose", function () { setLiveState("reconnecting…"); });
  // A run update carries its table rows inside <template> (an HTML parser drops a bare
  // <tr> that follows other elements). The ws extension swaps only top-level elements,
  // so these messages go through htmx's own swap, which handles out-of-band elements
  // in templates too.
  document.addEventListener("htmx:wsBeforeMessage", function (event) {
    var message = event.detail.message;
    if (typeof message !== "string" || message.indexOf("<template>") === -1) return;
    event.preventDefault();
    htmx.swap(document.body, message, { swapStyle: "none" });
    document.body.dispatchEvent(new CustomEvent("run-changed"));
  });
  // Plots listen for this (throttled) instead of being pushed on every change; a message
  // without rows (counts only: a reconnect that missed nothing) changes no plot.
  document.addEventListener("htmx:wsAfterMessage", function (event) {
    var message = event.detail.message;
    if (typeof message === "string" && message.indexOf('id="members-reload"') !== -1) {
      document.body.dispatchEvent(new CustomEvent("run-changed"));
    }
  });
  // A run page, on every (re)connect, says when its picture was taken: it gets only what changed since.
  document.addEventListener("htmx:wsOpen", function (event) {
    if (!event.target || event.target.id !== "run-live") return;
    var mark = document.getElementById("run-mark");
    var since = mark && mark.dataset.mark ? parseFloat(mark.dataset.mark) : null;
    event.detail.socketWrapper.send(JSON.stringify({ action: "catch_up", since: since }));
  });
  // Log tails: start from where this page got to (every byte once, also after a
  // reconnect), and acknowledge each message: the server sends only as fast as we read.
  function logPane(event) {
    var elt = event.target;
    return elt && elt.closest ? elt.closest("[data-log-stream]") : null;
  }
  document.addEventListener("htmx:wsOpen", function (event) {
    var pane = logPane(event);
    if (!pane) return;
    var mark = document.getElementById("log-" + pane.dataset.logStream + "-offset");
    var offset = mark && mark.dataset.offset ? parseInt(mark.dataset.offset, 10) : null;
    event.detail.socketWrapper.send(JSON.stringify({ action: "start", offset: offset }));
  });
  document.addEventListener("htmx:wsAfterMessage", function (event) {
    if (logPane(event)) event.detail.socketWrapper.send(JSON.stringify({ action: "ack" }));
  });
  document.addEventListener("htmx:oobAfterSwap", function (event) {
    var target = event.detail.target;
    if (target && target.hasAttribute && target.hasAttribute("data-follow")) {
      target.scrollTop = target.scrollHeight;
    }
  });

  document.addEventListener("DOMContentLoaded", function () { renderPlots(document); });
  document.addEventListener("htmx:afterSettle", function (event) { renderPlots(event.detail.elt); });
})();

// The attach form's file browser: a file (or a folder's "Use") fills the path field.
// A click handler here, as the Content-Security-Policy allows no inline script.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var pick = event.target.closest("[data-attach-path]");
    var field = pick && document.querySelector("#attach-form [name='path']");
    if (!field) return;
    field.value = pick.dataset.attachPath;
    field.focus();
  });
})();
