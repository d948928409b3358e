"""SQL lives here as `.sql` files, one statement each; `core.db` loads and binds them."""
