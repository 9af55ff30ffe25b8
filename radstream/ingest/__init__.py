"""The ingestion core: one path for every front door (STOW-RS in the gateway, DIMSE C-STORE).

``instance.store_instance`` writes one instance once under its key (identical re-sends recognised,
different content refused, objects a failed request left adopted: ``adoption``); ``commit.Committer``
records the study and writes the manifest of what one request or association stored, which starts the
pipeline. ``outcome`` is what both report from.
"""
