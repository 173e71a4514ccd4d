"""Files emu writes out for a reader to start from (``emu build-driver --template``)."""
