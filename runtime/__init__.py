"""How stages run: document shards (in-process or on Ray) and the stage cache policies. Imports core only."""
