"""Tools around the machine: building a reader's own driver (build_driver)."""
