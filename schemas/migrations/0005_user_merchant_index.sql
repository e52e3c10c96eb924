-- catfleet 0005: which users have merchant patterns of their own (the resolver asks per batch,
-- so that users without any cost no per-merchant lookups).
CREATE INDEX categorization_patterns_user_merchant_idx
    ON categorization_patterns (user_id) WHERE kind = 'merchant' AND active AND user_id IS NOT NULL;
