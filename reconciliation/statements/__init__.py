"""Provider statements: the files finance staff download from provider portals, read and loaded."""
