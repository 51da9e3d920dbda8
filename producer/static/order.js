// Live status: poll until the order is final, then show the final page.
(function () {
  const id = document.getElementById("order").dataset.orderId;
  const timer = setInterval(async function () {
    try {
      const res = await fetch("/api/orders/" + encodeURIComponent(id), { cache: "no-store" });
      if (!res.ok) return;
      const o = await res.json();
      const status = document.getElementById("status");
      status.textContent = o.status; status.className = "status status-" + o.status;
      if (o.status === "processed" || o.status === "failed") { clearInterval(timer); location.reload(); }
    } catch (e) { /* try again next tick */ }
  }, 500);
})();
