"""Hardware drivers, one module per device family. Import a driver module directly (or go through
`hardware.registry`); importing this package imports no vendor SDK."""
