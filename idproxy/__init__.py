"""Glue for the IDProxy system: settings, the `idproxy` command line and the demo."""
