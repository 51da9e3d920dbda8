-- The texts of a batch call arrive inside one JSON parameter (`OPENJSON`), and
-- OPENJSON on the TDS engine (Babelfish 4.3) hands a string back with its
-- JSON escapes still in (`\"`, `\\`, `\n`, `\u0001`). So the client carries
-- every text with `%XX` in place of each character JSON would escape, and of
-- `%` itself: `"` (%22), `\` (%5C), `%` (%25) and the control characters
-- U+0000-U+001F (%00-%1F), upper-case hex (`mssql/carried.rs`). A carried
-- text holds no character JSON escapes, so both engines read the same
-- string, and this function gives the original back. Every `%` of a carried
-- text starts one of these codes, so each REPLACE meets only whole codes;
-- `%25` goes last, so `%2522` becomes `%22`, not `"`. The loop over the
-- control characters runs only for a text that holds one. U+0000 is
-- replaced apart, and only when present: the TDS engine cannot store it, and
-- its NCHAR(0) is NULL, which would make the whole text NULL.
CREATE FUNCTION dbo.carried_text (@text NVARCHAR(MAX))
RETURNS NVARCHAR(MAX)
AS
BEGIN
    IF CHARINDEX(N'%0', @text) > 0 OR CHARINDEX(N'%1', @text) > 0
    BEGIN
        DECLARE @hex NCHAR(16) = N'0123456789ABCDEF';
        DECLARE @code INT = 1;
        WHILE @code < 32
        BEGIN
            SET @text = REPLACE(@text,
                CONCAT(N'%', SUBSTRING(@hex, @code / 16 + 1, 1), SUBSTRING(@hex, @code % 16 + 1, 1)), NCHAR(@code));
            SET @code = @code + 1;
        END;
        IF CHARINDEX(N'%00', @text) > 0
            SET @text = REPLACE(@text, N'%00', NCHAR(0));
    END;
    RETURN REPLACE(REPLACE(REPLACE(@text, N'%22', N'"'), N'%5C', N'\'), N'%25', N'%');
END
