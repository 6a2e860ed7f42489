"""The layer every other package stands on: model families and their structure
(``families``), the one block walk (``walk``), layer selection without torch (``layers``),
progress (``progress``) and peak memory (``memory``). ``core`` imports nothing from ``pruners``, ``eval`` or ``runners``."""
