-- The training probes of earlier stages (first_stage <= stage < $stage), for distillation with memory;
-- rows start like load_probes.sql's (doc_id, exact_score, fast_score, split), then the stage.
SELECT doc_id, exact_score, fast_score, split, stage
FROM probes
WHERE run_id = $run_id AND stage >= $first_stage AND stage < $stage AND split = 'train'
ORDER BY stage, doc_id;
