"""mytimerd: serve libmy_timer's CBOR ABI over unix and TCP sockets."""

__version__ = "0.1.0"
