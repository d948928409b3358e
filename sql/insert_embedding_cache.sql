-- New content-addressed vectors (Arrow relation `batch`: content_hash, model_key, embedding); a vector
-- already cached for the same text and model is kept.
INSERT INTO embedding_cache (content_hash, model_key, embedding)
SELECT content_hash, model_key, embedding FROM batch
ON CONFLICT DO NOTHING;
