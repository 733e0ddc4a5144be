"""Template catalogs on disk and over HTTP(S): publish into a catalog directory, fetch
a catalog's signed index and download its files (the rules are in domain.catalog)."""
