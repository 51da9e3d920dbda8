-- The procedures of the routes V20 and V21 replaced, no longer called:
-- placing an order alone or in two JSON steps (V8-V10), and the consumer's
-- set-based move and inbox rows inside a transaction its caller held open
-- (V14, V15). The calls that remain: dbo.place_orders, dbo.claim_outbox,
-- dbo.mark_published, dbo.order_facts, dbo.apply_batch.
DROP PROCEDURE dbo.place_order;
DROP PROCEDURE dbo.insert_orders;
DROP PROCEDURE dbo.insert_outbox;
DROP PROCEDURE dbo.mark_processed;
DROP PROCEDURE dbo.record_batch;
