"""SQL lives here as `.sql` files, one statement each; `influmix.db` loads and binds them."""
