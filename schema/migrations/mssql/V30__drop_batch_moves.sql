-- V20's dbo.batch_moves, keyed by session, which no procedure uses since
-- V27 (dbo.call_moves, V26, took its place).
DROP TABLE dbo.batch_moves;
