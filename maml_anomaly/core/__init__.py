"""The numeric core: numpy and torch only, no file I/O, no engine, no command line."""
