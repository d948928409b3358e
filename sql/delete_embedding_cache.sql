-- Drop one model key's cached vectors: a key only one run could read (tasks/embed RUN_PRIVATE_KEYS), when that run moves on.
DELETE FROM embedding_cache WHERE model_key = $model_key;
