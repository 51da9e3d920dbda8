// Live status: refresh the table from the JSON API every second.
(function () {
  const body = document.getElementById("recent-orders");
  function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; return td; }
  async function refresh() {
    try {
      const res = await fetch("/api/orders?limit=" + (body.dataset.limit || 20), { cache: "no-store" });
      if (!res.ok) return;
      const orders = await res.json();
      body.replaceChildren();
      for (const o of orders) {
        const row = body.insertRow();
        row.dataset.orderId = o.order_id;
        const link = document.createElement("a");
        link.href = "/orders/" + o.order_id; link.textContent = o.order_id;
        row.insertCell().appendChild(link);
        cell(row, o.customer_name); cell(row, o.product_id); cell(row, o.quantity);
        cell(row, o.status, "status status-" + o.status);
        cell(row, o.unit_price ?? "—"); cell(row, o.total_price ?? "—");
      }
    } catch (e) { /* offline for a moment: try again next tick */ }
  }
  setInterval(refresh, 1000);
})();
