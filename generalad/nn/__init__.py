"""Pure tensor code: no file I/O, no datasets."""
