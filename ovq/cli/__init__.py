"""The ``ovq`` command line (see ``ovq --help``)."""
