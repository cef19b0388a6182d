"""The pytest plugin: hooks (``hooks``) gather test verdicts, ``plan`` decides each contract's
change, ``update`` and ``writer`` apply it atomically, ``summary`` reports it.
"""
