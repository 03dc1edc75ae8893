"""encordfs: Encord datasets as a local filesystem.

Datasets are directories, data rows are files, metadata is in extended attributes.
"""

__version__ = "0.1.0"
