-- catfleet 0006: a cheaper hot write path for categorizations (measured with `catfleet bench
-- throughput`; figures in the README).
--
-- 1. No foreign keys on categorizations.category_id / pattern_id. Each FK check is a per-row
--    lookup that takes a FOR KEY SHARE lock on the parent row; every worker thread writes rows
--    pointing at the same few dozen categories, so those locks become MultiXacts shared by all
--    writers. The referenced ids come from patterns read in the same batch (and patterns
--    reference categories with a real FK); the ON DELETE SET NULL behaviour is kept by the
--    statement triggers below. A row written by a transaction still in flight while its
--    category is deleted can keep the deleted id: readers join categories (an unknown id reads
--    as uncategorized), and the next run of that expense rewrites it.
-- 2. explanation is json, not jsonb: it is written for every row and read only for display, so
--    it is stored as the text the worker encoded (no jsonb conversion). `->`/`->>` still work;
--    the upsert compares it as text. On a large existing table this ALTER rewrites the table:
--    run it in a quiet window.
ALTER TABLE categorizations
    DROP CONSTRAINT IF EXISTS categorizations_category_id_fkey,
    DROP CONSTRAINT IF EXISTS categorizations_pattern_id_fkey,
    ALTER COLUMN explanation TYPE json USING explanation::json;

CREATE FUNCTION catfleet_category_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE categorizations c SET category_id = NULL FROM gone WHERE c.category_id = gone.id;
    RETURN NULL;
END $$;
CREATE TRIGGER categories_clear_categorizations
    AFTER DELETE ON categories REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION catfleet_category_deleted();

CREATE FUNCTION catfleet_pattern_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE categorizations c SET pattern_id = NULL FROM gone WHERE c.pattern_id = gone.id;
    RETURN NULL;
END $$;
CREATE TRIGGER categorization_patterns_clear_categorizations
    AFTER DELETE ON categorization_patterns REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION catfleet_pattern_deleted();
