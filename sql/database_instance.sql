SELECT value FROM meta WHERE key = 'instance_id';
