-- Drop one model key's cached vectors (a model whose files could not be fingerprinted is never reused).
DELETE FROM embedding_cache WHERE model_key = $model_key;
