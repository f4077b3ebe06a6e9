"""trirender's app layer: the ``trirender`` console script (see ``trirender --help``)."""

__version__ = "0.1.0"
