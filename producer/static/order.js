// Live journey: poll until the order is final; each change of status
// re-renders the page, which shows when each step happened.
(function () {
  const page = document.getElementById("order");
  const id = page.dataset.orderId;
  const timer = setInterval(async function () {
    try {
      const res = await fetch("/api/orders/" + encodeURIComponent(id), { cache: "no-store" });
      if (!res.ok) return;
      const o = await res.json();
      const status = document.getElementById("status");
      status.textContent = o.status; status.className = "status status-" + o.status;
      if (o.status !== page.dataset.status) { clearInterval(timer); location.reload(); }
    } catch (e) { /* try again next tick */ }
  }, 500);
})();
