"""aprlib's version: written into the files it makes (APR metadata, GGUF ``general.generator``).

A module of its own so that a format writer can name the version without importing the
package root (which would be an upward import: the root re-exports the formats).
"""

__version__ = "0.1.0"
