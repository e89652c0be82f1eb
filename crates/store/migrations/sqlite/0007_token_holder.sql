-- A token names its holder (a reviewer, a service): the API records
-- decisions under that name instead of one typed each time.
ALTER TABLE api_tokens ADD COLUMN holder TEXT;
