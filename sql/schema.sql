-- influmix schema: every table carries run_id, so one DuckDB file holds many runs side by side
-- and any run's lineage (config -> documents -> probes -> scores -> mixture) is a join away.

-- One row per flow run: its config (as JSON and hash) and where its tracking lives.
CREATE TABLE IF NOT EXISTS runs (
    run_id              VARCHAR PRIMARY KEY,
    config_hash         VARCHAR NOT NULL,
    config_json         VARCHAR NOT NULL,
    status              VARCHAR NOT NULL,          -- running | completed | failed
    started_at          TIMESTAMP NOT NULL,
    finished_at         TIMESTAMP,
    mlflow_run_id       VARCHAR,
    prefect_flow_run_id VARCHAR
);
-- Which process runs it: `influmix resume` refuses to start a second worker on a run that is still alive.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER;

-- Clean, deduplicated pool documents. doc_id is stable: the record's own id, else source:line.
CREATE TABLE IF NOT EXISTS documents (
    run_id       VARCHAR NOT NULL,
    doc_id       VARCHAR NOT NULL,
    text         VARCHAR NOT NULL,
    source       VARCHAR NOT NULL,                 -- file path or hf dataset the record came from
    locator      VARCHAR NOT NULL,                 -- where in the source: line:N, item:N, row:N or file
    domain       VARCHAR NOT NULL,
    n_chars      INTEGER NOT NULL,
    n_tokens     INTEGER,                          -- exact count under the run's proxy BPE tokenizer
    content_hash VARCHAR NOT NULL,                 -- sha256 of whitespace-normalised text
    PRIMARY KEY (run_id, doc_id)
);

-- Records that could not be used, with the reason; nothing read is silently lost.
CREATE TABLE IF NOT EXISTS quarantine (
    run_id   VARCHAR NOT NULL,
    source   VARCHAR NOT NULL,
    locator  VARCHAR NOT NULL,                     -- where in the source: line:N, item:N, row:N or file
    reason   VARCHAR NOT NULL,                     -- invalid_json | not_utf8 | empty_text | missing_text | wrong_type | bad_id | bad_domain | too_long | duplicate_id | bad_file | wrong_schema; or the filter that rejected a document (filter stage)
    detail   VARCHAR,
    excerpt  VARCHAR                               -- first bytes of the raw record, for a human
);

-- The filter stage's verdicts: one row per document and filter that rejects it (a document may have several).
-- The document stays in `documents`, so re-running the filter stage with other thresholds needs no re-ingest;
-- every read of the pool goes through `pool_documents`, which leaves these documents out.
CREATE TABLE IF NOT EXISTS filtered_documents (
    run_id  VARCHAR NOT NULL,
    doc_id  VARCHAR NOT NULL,
    filter  VARCHAR NOT NULL,                      -- language | gopher_quality | gopher_repetition | fineweb_quality | c4_quality
    detail  VARCHAR NOT NULL,                      -- the filter's own reason, e.g. gopher_enough_stop_words, fr (p=0.99)
    PRIMARY KEY (run_id, doc_id, filter)
);

-- The pool a run selects from: its clean, deduplicated documents that no filter rejected.
CREATE VIEW IF NOT EXISTS pool_documents AS
SELECT d.run_id, d.doc_id, d.text, d.source, d.locator, d.domain, d.n_chars, d.n_tokens, d.content_hash
FROM documents d
WHERE NOT EXISTS (SELECT 1 FROM filtered_documents f WHERE f.run_id = d.run_id AND f.doc_id = d.doc_id);

-- Dropped duplicates and what they duplicate (exact by hash, near by MinHash Jaccard).
CREATE TABLE IF NOT EXISTS duplicates (
    run_id       VARCHAR NOT NULL,
    doc_id       VARCHAR NOT NULL,
    source       VARCHAR NOT NULL,
    duplicate_of VARCHAR NOT NULL,
    kind         VARCHAR NOT NULL,                 -- exact | near
    similarity   DOUBLE NOT NULL
);

-- The held-out target the proxy LM's reference loss is measured on.
CREATE TABLE IF NOT EXISTS reference_documents (
    run_id  VARCHAR NOT NULL,
    ref_id  VARCHAR NOT NULL,
    text    VARCHAR NOT NULL,
    domain  VARCHAR NOT NULL,
    PRIMARY KEY (run_id, ref_id)
);

-- Content-addressed document vectors, shared by every run in this file: a run embeds only documents whose
-- text (`documents.content_hash`) has no vector yet for its model. `model_key` hashes the model's files and
-- the settings that change vectors (tasks/embed/encoders.py `embedding_key`).
CREATE TABLE IF NOT EXISTS embedding_cache (
    content_hash VARCHAR NOT NULL,
    model_key    VARCHAR NOT NULL,
    embedding    FLOAT[] NOT NULL,
    PRIMARY KEY (content_hash, model_key)
);

-- Which embedding model each run's embed stage used: a run's vectors are read from the cache through it,
-- never copied (a second run on the same corpus writes one row here, not a second copy of the matrix).
CREATE TABLE IF NOT EXISTS run_embedding_models (
    run_id    VARCHAR PRIMARY KEY,
    model     VARCHAR NOT NULL,                    -- `embed.model` as configured
    model_key VARCHAR NOT NULL                     -- its `embedding_cache.model_key`
);

-- A run's embeddings: one L2-normalised vector per pool document, from the cache under the run's model key.
-- (Files from before this view held a table of the same name: core/db.py moves it into the cache first.)
CREATE VIEW IF NOT EXISTS embeddings AS
SELECT d.run_id, d.doc_id, m.model, c.embedding
FROM run_embedding_models m
JOIN pool_documents d ON d.run_id = m.run_id
JOIN embedding_cache c ON c.content_hash = d.content_hash AND c.model_key = m.model_key;

CREATE TABLE IF NOT EXISTS clusters (
    run_id     VARCHAR NOT NULL,
    cluster_id INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    centroid   FLOAT[] NOT NULL,
    PRIMARY KEY (run_id, cluster_id)
);

CREATE TABLE IF NOT EXISTS cluster_assignments (
    run_id     VARCHAR NOT NULL,
    doc_id     VARCHAR NOT NULL,
    cluster_id INTEGER NOT NULL,
    distance   DOUBLE NOT NULL,                    -- cosine distance to the centroid
    PRIMARY KEY (run_id, doc_id)
);

-- Proxy-LM checkpoints per pretraining stage (files on disk, metrics here).
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id          VARCHAR NOT NULL,
    stage           INTEGER NOT NULL,
    path            VARCHAR NOT NULL,
    n_params        BIGINT NOT NULL,
    train_tokens    BIGINT NOT NULL,
    steps           INTEGER NOT NULL,
    final_train_loss DOUBLE,
    reference_loss  DOUBLE NOT NULL,
    tokens_per_s    DOUBLE,
    PRIMARY KEY (run_id, stage)
);

-- Oracle probes: exact = loss_before - loss_after one AdamW step on the document (MATES);
-- fast = a cheap estimate of the same quantity. `probe.fast_label_multiplier` times more documents get a
-- fast probe than an exact one: the influence model learns from many fast labels and is judged on exact ones.
CREATE TABLE IF NOT EXISTS probes (
    run_id      VARCHAR NOT NULL,
    stage       INTEGER NOT NULL,
    doc_id      VARCHAR NOT NULL,
    exact_score DOUBLE,                            -- NULL for documents given a fast probe only
    fast_score  DOUBLE,
    loss_before DOUBLE,
    loss_after  DOUBLE,
    split       VARCHAR NOT NULL,                  -- train | heldout (held-out rows judge the influence model)
    PRIMARY KEY (run_id, stage, doc_id)
);
-- The oracle's value (what the influence model learns: the conditional loss reduction, or the fast one-step
-- probe), which pull of the bandit measured it, and which oracle it was.
ALTER TABLE probes ADD COLUMN IF NOT EXISTS label DOUBLE;
ALTER TABLE probes ADD COLUMN IF NOT EXISTS pull INTEGER;
ALTER TABLE probes ADD COLUMN IF NOT EXISTS oracle VARCHAR;

-- The distilled influence model's prediction for every document, per stage.
CREATE TABLE IF NOT EXISTS influence_scores (
    run_id  VARCHAR NOT NULL,
    stage   INTEGER NOT NULL,
    doc_id  VARCHAR NOT NULL,
    score   DOUBLE NOT NULL,
    PRIMARY KEY (run_id, stage, doc_id)
);

-- The cascade's second look (tasks/rerank.py): the stage's oracle measured on the head of the selection
-- ranking, the influence model's score beside it, and each document's place in the ranking it was cut from.
CREATE TABLE IF NOT EXISTS reranked_documents (
    run_id       VARCHAR NOT NULL,
    stage        INTEGER NOT NULL,
    doc_id       VARCHAR NOT NULL,
    ranked       INTEGER NOT NULL,                 -- place in the selection ranking (0 = its top)
    score        DOUBLE NOT NULL,                  -- the influence model's score
    measured     DOUBLE NOT NULL,                  -- the oracle's value (higher = better for the target)
    oracle       VARCHAR NOT NULL,
    PRIMARY KEY (run_id, stage, doc_id)
);
ALTER TABLE reranked_documents ADD COLUMN IF NOT EXISTS variance DOUBLE;  -- the measured value's sampling variance
ALTER TABLE reranked_documents ADD COLUMN IF NOT EXISTS estimate DOUBLE;  -- what the head is ordered by

-- Every pull of a stage's oracle bandit, in pull order: which arm, what was measured, the reward it earned.
CREATE TABLE IF NOT EXISTS oracle_pulls (
    run_id       VARCHAR NOT NULL,
    stage        INTEGER NOT NULL,
    pull         INTEGER NOT NULL,
    cluster_id   INTEGER NOT NULL,
    ucb          DOUBLE,                           -- NULL during the warm-up (every arm once)
    n_measured   INTEGER NOT NULL,
    mean_value   DOUBLE,                           -- mean oracle value of the pull's documents
    group_reward DOUBLE,                           -- the arm's rollout reward, on its first pull (else NULL)
    reward       DOUBLE NOT NULL,                  -- what the bandit learnt: values and group reward in spread units
    PRIMARY KEY (run_id, stage, pull)
);

-- One row per run and stage: the selected mixture's header.
CREATE TABLE IF NOT EXISTS mixtures (
    run_id       VARCHAR NOT NULL,
    stage        INTEGER NOT NULL,
    config_hash  VARCHAR NOT NULL,
    token_budget BIGINT NOT NULL,
    tokens       BIGINT NOT NULL,
    n_documents  INTEGER NOT NULL,
    created_at   TIMESTAMP NOT NULL,
    PRIMARY KEY (run_id, stage)
);

CREATE TABLE IF NOT EXISTS mixture_members (
    run_id     VARCHAR NOT NULL,
    stage      INTEGER NOT NULL,
    doc_id     VARCHAR NOT NULL,
    cluster_id INTEGER NOT NULL,
    score      DOUBLE NOT NULL,
    round      INTEGER NOT NULL,
    PRIMARY KEY (run_id, stage, doc_id)
);

-- Trained proxy tokenizers by what they were trained on: `sample_key` hashes the training sample's exact
-- texts (in order), the vocabulary size and the tokenizers version, so a run whose sample is the same
-- reuses the file instead of training again.
CREATE TABLE IF NOT EXISTS tokenizers (
    sample_key     VARCHAR PRIMARY KEY,
    tokenizer_hash VARCHAR NOT NULL,               -- sha256 of tokenizer.json
    tokenizer_json VARCHAR NOT NULL
);

-- Content-addressed token counts, shared by every run: keyed by the exact text (sha256, not the
-- whitespace-collapsed content_hash: byte-level BPE counts whitespace) and the tokenizer file's hash.
CREATE TABLE IF NOT EXISTS token_counts (
    text_hash      VARCHAR NOT NULL,
    tokenizer_hash VARCHAR NOT NULL,
    n_tokens       INTEGER NOT NULL,
    PRIMARY KEY (text_hash, tokenizer_hash)
);

-- Facts about this database file. `instance_id` is minted once per file: stage-cache keys include it, so a
-- cached stage is never reused against a different (or recreated) database.
CREATE TABLE IF NOT EXISTS meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);
INSERT OR IGNORE INTO meta VALUES ('instance_id', CAST(uuid() AS VARCHAR));
