"""The DIMSE listener: a C-STORE SCP (pynetdicom) in front of the same ingestion core as STOW-RS.

``main.py`` runs it (``radstream dimse``); ``peers.py`` decides which calling AE (from which host) is which
tenant; ``listener.py`` is the pynetdicom application entity, its limits and event handlers;
``association.py`` groups what one association stored into manifests; ``part10.py`` wraps a received data
set in a File Meta built from the presentation context. docs/conformance.md is its conformance statement.
"""
