"""Reusable pieces of the pipeline: params, tables, text, encoder, classifier, metrics; and the predict CLI.

The DVC stages in stages/ import these; nothing here reads or writes pipeline files on import.
"""
