"""The help format of every PyraTok command line: each optional flag shows its default.

Shared by the `pyratok` commands and the `python -m` tools (training, caching, evaluation, assembly).
"""
from __future__ import annotations

import argparse


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every optional flag's default, unless its help already says it ("default: ...")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if "default:" in help_text or action.required:
            return help_text
        return super()._get_help_string(action)
