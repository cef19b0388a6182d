"""One module per file format, each with its reader, its writer and its limits."""
