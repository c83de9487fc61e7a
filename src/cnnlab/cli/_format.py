"""The CLI's output formatting: :mod:`cnnlab.tables`."""

from cnnlab.tables import format_table, human, print_json

__all__ = ["format_table", "human", "print_json"]
