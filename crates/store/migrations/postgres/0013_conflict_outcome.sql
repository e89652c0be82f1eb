-- What became of a reviewer's decision once a run took it up: `applied`,
-- or why it was not (parked again as another conflict, its record gone or
-- no longer synced). Set with `applied_at`; NULL before, and for the
-- conflicts decided before this column existed.
ALTER TABLE conflicts ADD COLUMN outcome text;
